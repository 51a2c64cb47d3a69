//! A real browser for the dashboard's tests: Debian's `chromium`, driven
//! by npm's `playwright-core` through `testkit/browser/driver.mjs`, one
//! JSON command per line. A test opens [`Page`]s and clicks, types, waits
//! for text and takes screenshots, between its own calls to the farm.
//!
//! `playwright-core` comes from the dashboard's own packages (`web/`, `npm
//! ci`, which `scripts/test` runs). Without chromium, node or those
//! packages, [`Browser::launch`] says what is missing and returns `None`
//! (the test skips), unless `FARM_REQUIRE_BROWSER=1` makes it fail.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::Mutex,
};

use crate::skip::skip;

/// The browser the driver starts.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest any one command may take (the driver's own waits are shorter).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The folder holding `node_modules/playwright-core`: the dashboard's.
pub fn modules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// Where the tests' screenshots go: `target/screenshots/<test>/`.
pub fn screenshot_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/screenshots")
        .join(test);
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// What is missing to run a browser here (empty: nothing).
pub fn missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).is_file() {
        missing.push("chromium (apt-get install chromium)");
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node (apt-get install nodejs npm)");
    }
    if !modules_dir()
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("the dashboard's npm packages (npm ci in web/)");
    }
    missing
}

/// Whether a browser can run here; says why not (or fails, when
/// `FARM_REQUIRE_BROWSER=1`) otherwise.
pub fn available(test: &str) -> bool {
    let missing = missing();
    missing.is_empty()
        || skip(
            "FARM_REQUIRE_BROWSER",
            test,
            &format!(
                "{} missing (scripts/test installs them)",
                missing.join(", ")
            ),
        )
}

struct Driver {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// A headless chromium. Dropping it kills the browser.
pub struct Browser {
    driver: Mutex<Driver>,
    _child: Child,
    test: String,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("test", &self.test).finish()
    }
}

/// How a page is opened.
#[derive(Debug, Clone)]
pub struct PageOptions {
    pub width: u32,
    pub height: u32,
    /// `light` or `dark`.
    pub color_scheme: &'static str,
}

impl Default for PageOptions {
    fn default() -> Self {
        Self {
            width: 1400,
            height: 1000,
            color_scheme: "light",
        }
    }
}

impl Browser {
    /// Starts chromium for `test` (screenshots go to its folder); `None`
    /// when the browser cannot run here (see [`available`]).
    pub async fn launch(test: &str) -> Option<Self> {
        if !available(test) {
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/driver.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .arg(CHROMIUM)
            .arg(modules_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the browser driver");
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("driver stdout")).lines();
        Some(Self {
            driver: Mutex::new(Driver { stdin, stdout }),
            _child: child,
            test: test.to_owned(),
        })
    }

    /// Sends one command; its value, or the driver's error.
    pub async fn try_command(&self, command: Value) -> Result<Value, String> {
        let mut driver = self.driver.lock().await;
        let line = format!("{command}\n");
        let exchange = async {
            driver
                .stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("the driver is gone: {e}"))?;
            let answer = driver
                .stdout
                .next_line()
                .await
                .map_err(|e| format!("the driver is gone: {e}"))?
                .ok_or("the driver exited")?;
            serde_json::from_str::<Value>(&answer).map_err(|e| format!("{e}: {answer}"))
        };
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer to {command} in {COMMAND_TIMEOUT:?}"))??;
        if answer["ok"] == true {
            Ok(answer["value"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    /// Sends one command; panics with the driver's error.
    pub async fn command(&self, command: Value) -> Value {
        match self.try_command(command.clone()).await {
            Ok(value) => value,
            Err(error) => panic!("browser: {command}: {error}"),
        }
    }

    /// Opens `url` in a new page of its own (own storage and connections).
    pub async fn page(&self, url: &str, options: PageOptions) -> Page<'_> {
        let index = self
            .command(json!({
                "op": "newPage",
                "url": url,
                "viewport": {"width": options.width, "height": options.height},
                "colorScheme": options.color_scheme,
            }))
            .await;
        Page {
            browser: self,
            index: index.as_u64().expect("a page number"),
        }
    }
}

/// One page of a [`Browser`]. Selectors are Playwright's: CSS, plus
/// `:has-text("…")`, `text=…` and the like.
#[derive(Debug, Clone, Copy)]
pub struct Page<'b> {
    browser: &'b Browser,
    index: u64,
}

impl Page<'_> {
    async fn run(&self, mut command: Value) -> Value {
        command["page"] = json!(self.index);
        self.browser.command(command).await
    }

    /// Runs a command that may fail; the error in words.
    pub async fn try_run(&self, mut command: Value) -> Result<Value, String> {
        command["page"] = json!(self.index);
        self.browser.try_command(command).await
    }

    /// Opens `url`; its HTTP status.
    pub async fn goto(&self, url: &str) -> Option<u64> {
        self.run(json!({"op": "goto", "url": url})).await.as_u64()
    }

    pub async fn reload(&self) {
        self.run(json!({"op": "reload"})).await;
    }

    pub async fn click(&self, selector: &str) {
        self.run(json!({"op": "click", "selector": selector})).await;
    }

    /// Clicks even a disabled control (a user who removed `disabled`).
    pub async fn force_click(&self, selector: &str) {
        self.run(json!({"op": "click", "selector": selector, "force": true}))
            .await;
    }

    pub async fn fill(&self, selector: &str, value: &str) {
        self.run(json!({"op": "fill", "selector": selector, "value": value}))
            .await;
    }

    /// Picks the option of value `value` in a `<select>`.
    pub async fn select(&self, selector: &str, value: &str) {
        self.run(json!({"op": "select", "selector": selector, "value": value}))
            .await;
    }

    pub async fn press(&self, selector: &str, key: &str) {
        self.run(json!({"op": "press", "selector": selector, "key": key}))
            .await;
    }

    /// Makes every later request for a URL matching `glob` (`**/x-*.js`)
    /// fail, as a server that no longer has the file.
    pub async fn block(&self, glob: &str) {
        self.run(json!({"op": "block", "pattern": glob})).await;
    }

    /// Waits until `selector` is visible.
    pub async fn wait_for(&self, selector: &str, timeout: Duration) {
        self.run(
            json!({"op": "waitFor", "selector": selector, "timeout": timeout.as_millis() as u64}),
        )
        .await;
    }

    /// Waits until `selector` is hidden or gone.
    pub async fn wait_gone(&self, selector: &str, timeout: Duration) {
        self.run(json!({"op": "waitFor", "selector": selector, "state": "hidden", "timeout": timeout.as_millis() as u64}))
            .await;
    }

    /// Waits until the text of `selector` contains `text`; returns it.
    pub async fn wait_text(&self, selector: &str, text: &str, timeout: Duration) -> String {
        let value = self
            .run(json!({"op": "waitText", "selector": selector, "text": text, "timeout": timeout.as_millis() as u64}))
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `selector` matches exactly `count` elements.
    pub async fn wait_count(&self, selector: &str, count: usize, timeout: Duration) {
        self.run(json!({"op": "waitCount", "selector": selector, "count": count, "timeout": timeout.as_millis() as u64}))
            .await;
    }

    /// The text of the first match.
    pub async fn text(&self, selector: &str) -> String {
        let value = self.run(json!({"op": "text", "selector": selector})).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The text of every match.
    pub async fn texts(&self, selector: &str) -> Vec<String> {
        strings(&self.run(json!({"op": "texts", "selector": selector})).await)
    }

    pub async fn count(&self, selector: &str) -> usize {
        let value = self.run(json!({"op": "count", "selector": selector})).await;
        value.as_u64().unwrap_or(0) as usize
    }

    pub async fn attribute(&self, selector: &str, name: &str) -> Option<String> {
        let value = self
            .run(json!({"op": "attribute", "selector": selector, "name": name}))
            .await;
        value.as_str().map(str::to_owned)
    }

    pub async fn enabled(&self, selector: &str) -> bool {
        self.run(json!({"op": "enabled", "selector": selector}))
            .await
            .as_bool()
            .unwrap_or(false)
    }

    /// Runs `function` (JavaScript source of a function taking one argument)
    /// in the page with `arg`; its result.
    pub async fn evaluate(&self, function: &str, arg: Value) -> Value {
        self.run(json!({"op": "evaluate", "expression": function, "arg": arg}))
            .await
    }

    /// Saves a full-page screenshot as `<name>.png` in the test's folder
    /// (`target/screenshots/<test>/`); returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = screenshot_dir(&self.browser.test).join(format!("{name}.png"));
        self.run(json!({"op": "screenshot", "path": path})).await;
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Console errors and uncaught exceptions the page has had.
    pub async fn problems(&self) -> Vec<String> {
        strings(&self.run(json!({"op": "problems"})).await)
    }

    pub async fn close(&self) {
        self.run(json!({"op": "close"})).await;
    }
}

/// A JSON array of strings as strings (anything else: none).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
