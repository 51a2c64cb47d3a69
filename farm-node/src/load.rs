//! Simulated load: CPU burnt and memory held for a while, as a busy server
//! would, so metrics, alerts and schedulers can be tested against it.
//!
//! CPU is burnt on as many threads as the asked share needs, each working
//! a duty cycle of 10 ms periods; memory is allocated and every page
//! touched, so it counts in the node's RSS and its cgroup. A new simulation
//! replaces the running one. Both are bounded: at most the node's CPU, at
//! most 1 GiB and three quarters of its memory limit, at most 10 minutes.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use farm_api::node::{DEFAULT_LOAD_DURATION_MS, MAX_LOAD_DURATION_MS, MAX_LOAD_MEMORY_MIB};
use thiserror::Error;
use tracing::info;

use crate::sampler::{CGROUP_ROOT, Cgroup};

/// Duty-cycle period of the CPU burners.
const PERIOD: Duration = Duration::from_millis(10);

/// A simulation that cannot be run.
#[derive(Debug, Error, PartialEq)]
pub enum LoadError {
    #[error("cpu_percent must be between 0 and 100, got {0}")]
    Cpu(f64),
    #[error(
        "memory_mib must be at most {max} (1 GiB and 3/4 of the node's memory limit), got {asked}"
    )]
    Memory { asked: u32, max: u32 },
    #[error(
        "duration_ms must be at most {MAX_LOAD_DURATION_MS} (0: {DEFAULT_LOAD_DURATION_MS}), got {0}"
    )]
    Duration(u32),
}

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub cpu_percent: f64,
    pub memory_mib: u32,
    pub duration: Duration,
}

impl Load {
    /// Checks the asks against the bounds; `memory_limit` is the node's.
    pub fn new(
        cpu_percent: f64,
        memory_mib: u32,
        duration_ms: u32,
        memory_limit: u64,
    ) -> Result<Self, LoadError> {
        if !(0.0..=100.0).contains(&cpu_percent) {
            return Err(LoadError::Cpu(cpu_percent));
        }
        let max = u32::try_from(memory_limit / 4 * 3 / (1 << 20))
            .unwrap_or(u32::MAX)
            .min(MAX_LOAD_MEMORY_MIB);
        if memory_mib > max {
            return Err(LoadError::Memory {
                asked: memory_mib,
                max,
            });
        }
        let duration_ms = match duration_ms {
            0 => DEFAULT_LOAD_DURATION_MS,
            ms if ms > MAX_LOAD_DURATION_MS => return Err(LoadError::Duration(ms)),
            ms => ms,
        };
        let duration = Duration::from_millis(u64::from(duration_ms));
        Ok(Self {
            cpu_percent,
            memory_mib,
            duration,
        })
    }
}

/// Runs one simulation at a time.
#[derive(Debug, Default)]
pub struct Simulator {
    /// Stops the running simulation.
    current: Mutex<Option<Arc<AtomicBool>>>,
}

impl Simulator {
    /// Starts `load` on `cpus` CPUs' worth of capacity, replacing the running
    /// simulation; returns when it ends.
    pub fn start(&self, load: Load, cpus: f64) -> SystemTime {
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(previous) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Arc::clone(&stop))
        {
            previous.store(true, Ordering::Relaxed);
        }
        let until = Instant::now() + load.duration;
        info!(cpu_percent = load.cpu_percent, memory_mib = load.memory_mib, duration = ?load.duration, "simulating load");
        // Memory: allocated and touched on a thread that holds it to the end.
        if load.memory_mib > 0 {
            let stop = Arc::clone(&stop);
            let bytes = load.memory_mib as usize * (1 << 20);
            std::thread::spawn(move || {
                let mut held = vec![0u8; bytes];
                for page in held.chunks_mut(4096) {
                    page[0] = 1;
                }
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                drop(std::hint::black_box(held));
            });
        }
        // CPU: the asked share of the node's capacity, spread over threads
        // that each run a duty cycle.
        let cores = cpus * load.cpu_percent / 100.0;
        if cores > 0.0 {
            let threads = cores.ceil().max(1.0) as usize;
            let duty = cores / threads as f64;
            for _ in 0..threads {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || burn(duty, until, &stop));
            }
        }
        SystemTime::now() + load.duration
    }
}

/// Keeps one thread busy for `duty` (0 to 1) of every period until `until`.
fn burn(duty: f64, until: Instant, stop: &AtomicBool) {
    let busy = PERIOD.mul_f64(duty.clamp(0.0, 1.0));
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let start = Instant::now();
        while start.elapsed() < busy {
            for i in 0..256u64 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
            }
        }
        let rest = PERIOD.saturating_sub(start.elapsed());
        if !rest.is_zero() {
            std::thread::sleep(rest);
        }
    }
    std::hint::black_box(x);
}

/// CPUs and memory this process may use, read now: the cgroup's limits,
/// else the machine's CPUs and no memory limit beyond [`MAX_LOAD_MEMORY_MIB`].
/// For before the first sample, which carries the same figures.
pub fn capacity_now() -> (f64, u64) {
    let cgroup = Cgroup::new(CGROUP_ROOT);
    let machine = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let cpus = cgroup.cpu_limit().map_or(machine, |c| c.min(machine));
    (cpus, cgroup.memory_limit().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let gib = 1 << 30;
        assert!(Load::new(50.0, 100, 1000, 4 * gib).is_ok());
        assert_eq!(Load::new(101.0, 0, 1000, gib), Err(LoadError::Cpu(101.0)));
        assert_eq!(Load::new(-1.0, 0, 1000, gib), Err(LoadError::Cpu(-1.0)));
        assert_eq!(
            Load::new(0.0, 100, 1000, 128 << 20),
            Err(LoadError::Memory {
                asked: 100,
                max: 96
            })
        );
        assert_eq!(
            Load::new(0.0, 2000, 1000, 64 * gib),
            Err(LoadError::Memory {
                asked: 2000,
                max: 1024
            })
        );
        assert_eq!(
            Load::new(0.0, 0, 0, gib).map(|load| load.duration),
            Ok(Duration::from_millis(DEFAULT_LOAD_DURATION_MS.into())),
            "0 is the default duration"
        );
        assert_eq!(
            Load::new(0.0, 0, 600_001, gib),
            Err(LoadError::Duration(600_001))
        );
    }

    #[test]
    fn a_simulation_burns_cpu_and_stops_by_itself() {
        /// CPU ticks (1/100 s) this process has used.
        fn cpu() -> u64 {
            let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
            stat.rsplit_once(')')
                .expect("comm")
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|f| f.parse::<u64>().expect("ticks"))
                .sum()
        }
        // Polled rather than timed: on a busy machine the burner gets less
        // of the CPU than it asks for, so a fixed window would flake.
        let simulator = Simulator::default();
        let load = Load::new(100.0, 8, 1_000, 1 << 30).expect("valid");
        let before = cpu();
        let started = Instant::now();
        simulator.start(load, 1.0);
        while cpu() - before < 20 {
            assert!(
                started.elapsed() < load.duration,
                "only {} ticks of CPU burnt in the simulation's second",
                cpu() - before
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Stopped: a quiet 300 ms window comes within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let settled = cpu();
            std::thread::sleep(Duration::from_millis(300));
            let burnt = cpu() - settled;
            if burnt <= 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still burning {burnt} ticks per 300 ms long after the simulation ended"
            );
        }
    }
}
