//! Metrics from a farm of 50 real process nodes: every node reports, and the
//! farm's aggregate is exactly the sum, average and maximum of what the
//! nodes report; the compact loads list every node with its figures.

use std::time::Duration;

use farm_api::v1::{GetFarmMetricsRequest, WorkRequest, workload_client::WorkloadClient};
use farm_testkit::{Farm, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_report_and_the_aggregate_adds_up() {
    let farm = Farm::start(50, &[]).await;
    let nodes = farm.wait_healthy(50, Duration::from_secs(30)).await;
    // Some requests on a few nodes, so latency and counts are not empty.
    for node in nodes.iter().take(5) {
        let mut client = WorkloadClient::connect(format!("http://{}", node.address))
            .await
            .expect("connect to a node");
        for id in 0..20 {
            let _ = client
                .work(WorkRequest {
                    id,
                    fail_code: if id % 10 == 0 { 14 } else { 0 },
                    ..Default::default()
                })
                .await;
        }
    }
    let farm_metrics = eventually(
        "all 50 nodes reporting, 100 requests counted",
        Duration::from_secs(20),
        || async {
            let m = farm
                .metrics()
                .get_farm_metrics(GetFarmMetricsRequest {
                    group: String::new(),
                    include_nodes: true,
                    include_loads: true,
                })
                .await
                .expect("GetFarmMetrics")
                .into_inner();
            let counted: u64 = m
                .node_metrics
                .iter()
                .filter_map(|n| n.sample.as_ref())
                .map(|s| s.requests)
                .sum();
            if m.reporting_nodes == 50 && counted >= 100 {
                Ok(m)
            } else {
                Err(format!(
                    "{} reporting, {counted} requests counted",
                    m.reporting_nodes
                ))
            }
        },
    )
    .await;
    assert_eq!(farm_metrics.nodes, 50);
    assert_eq!(farm_metrics.healthy_nodes, 50);
    assert_eq!(farm_metrics.node_metrics.len(), 50);
    let samples: Vec<_> = farm_metrics
        .node_metrics
        .iter()
        .map(|n| n.sample.clone().expect("every node has a sample"))
        .collect();
    let memory: u64 = samples.iter().map(|s| s.memory_used_bytes).sum();
    assert_eq!(farm_metrics.memory_used_bytes, memory);
    let cpu_max = samples.iter().map(|s| s.cpu_percent).fold(0.0, f64::max);
    assert!((farm_metrics.cpu_percent_max - cpu_max).abs() < 1e-9);
    let cpu_avg = samples.iter().map(|s| s.cpu_percent).sum::<f64>() / 50.0;
    assert!((farm_metrics.cpu_percent_avg - cpu_avg).abs() < 1e-9);
    let requests: u64 = samples.iter().map(|s| s.requests).sum();
    assert_eq!(farm_metrics.requests, requests);
    assert!(requests >= 100, "{requests}");
    let errors: u64 = samples.iter().flat_map(|s| s.errors_by_code.values()).sum();
    assert_eq!(farm_metrics.errors, errors);
    assert!(errors >= 10, "every tenth request failed: {errors}");
    // The compact loads carry every node, with its sample's figures.
    let loads = farm_metrics.loads.as_ref().expect("loads, as asked");
    assert_eq!(loads.node_ids.len(), 50);
    for (i, node) in farm_metrics.node_metrics.iter().enumerate() {
        let sample = node.sample.as_ref().expect("a sample");
        assert_eq!(loads.node_ids[i], node.node_id, "listed in the same order");
        assert_eq!(loads.cpu_percent[i], sample.cpu_percent as f32);
        assert_eq!(loads.memory_used_bytes[i], sample.memory_used_bytes as f64);
        assert_eq!(
            loads.memory_limit_bytes[i],
            sample.memory_limit_bytes as f64
        );
        assert_eq!(
            loads.requests_per_second[i],
            sample.requests_per_second as f32
        );
    }
    for sample in &samples {
        assert!(
            sample.rss_bytes > 0 && sample.memory_limit_bytes > 0,
            "{sample:?}"
        );
    }
}
