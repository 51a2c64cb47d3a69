//! The dashboard's Load test section, in chromium, against a control plane
//! with process nodes: a run started from the page streams its seconds
//! into the charts and ends with its report; Stop, or leaving the section,
//! ends the run on the control plane too; a second run meanwhile reads as
//! such; a viewer sees the form disabled. Every run is a few requests per
//! second for a bounded time, to 127.0.0.1. Screenshots go to
//! `target/screenshots/<test>/`.

use std::time::Duration;

use farm_api::v1::{LoadTestRequest, load_test_event::Event};
use farm_testkit::{
    ADMIN, Farm, TOKENS, VIEWER,
    browser::{Browser, Page, PageOptions},
    eventually,
};
use tonic::Code;

use crate::{SHOWN, live, no_problems};

/// Fills the form's main fields: an open loop at `rate` for `seconds`.
async fn open_loop(page: &Page<'_>, rate: &str, seconds: &str) {
    page.select("select[name=loop]", "open").await;
    page.fill("input[name=rate]", rate).await;
    page.fill("input[name=duration]", seconds).await;
}

/// Unfolds or folds the advanced fields.
async fn advanced(page: &Page<'_>, open: bool) {
    page.evaluate(
        "(open) => { document.querySelector('.lt-advanced').open = open; }",
        serde_json::json!(open),
    )
    .await;
}

/// Waits until the page's run has measured at least one second.
async fn measuring(page: &Page<'_>) {
    page.wait_text(".lt-figures", "Second ", SHOWN).await;
}

/// Runs a short load test through the API until the control plane takes
/// it: proof that no other run is left on it. Its report.
async fn run_from_the_api(farm: &Farm, token: Option<&str>) -> farm_api::v1::LoadTestReport {
    eventually(
        "the control plane to take a new run",
        Duration::from_secs(10),
        || async {
            let request = LoadTestRequest {
                rate: 20.0,
                duration_ms: 300,
                ..Default::default()
            };
            let mut stream = match farm.with_token(token).load_test().run(request).await {
                Ok(stream) => stream.into_inner(),
                Err(status) if status.code() == Code::ResourceExhausted => return Err(status),
                Err(status) => panic!("a run from the API: {status:?}"),
            };
            loop {
                let event = tokio::time::timeout(SHOWN, stream.message())
                    .await
                    .expect("events in time")
                    .expect("events, not an error")
                    .and_then(|e| e.event);
                match event {
                    Some(Event::Report(report)) => return Ok(report),
                    Some(_) => {}
                    None => panic!("the stream ended without a report"),
                }
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_test_from_the_page_streams_its_seconds_and_reports() {
    let test = "a_load_test_from_the_page_streams_its_seconds_and_reports";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let farm = Farm::start(3, &[]).await;
    farm.wait_healthy(3, Duration::from_secs(30)).await;

    let page = browser
        .page(&format!("{}/#loadtest", farm.url()), PageOptions::default())
        .await;
    live(&page).await;
    page.wait_text("select[name=group]", "Every group (3 healthy)", SHOWN)
        .await;
    page.screenshot("form").await;

    // Bad values are named before anything is sent.
    open_loop(&page, "-5", "0").await;
    advanced(&page, true).await;
    page.fill("input[name=errorRate]", "150").await;
    advanced(&page, false).await;
    page.click("button:has-text('Start load test')").await;
    let problems = page
        .wait_text(".lt-problems", "Rate: -5 is out of range", SHOWN)
        .await;
    assert!(
        problems.contains("Duration: 0 is out of range") && problems.contains("Error rate: 150"),
        "every problem is listed: {problems}"
    );
    assert_eq!(
        page.attribute("input[name=rate]", "aria-invalid")
            .await
            .as_deref(),
        Some("true")
    );
    assert!(
        page.count(".lt-advanced[open]").await == 1,
        "a problem in the folded fields unfolds them"
    );
    assert!(
        page.count(".lt-run:visible").await == 0,
        "nothing ran: no run is shown"
    );
    page.screenshot("refused").await;

    // 30 requests per second for 4 s: the seconds stream in.
    open_loop(&page, "30", "4").await;
    page.fill("input[name=errorRate]", "").await;
    page.click("button:has-text('Start load test')").await;
    page.wait_gone(".lt-problems", SHOWN).await;
    page.wait_text(".lt-status", "Driving 3 nodes", SHOWN).await;
    let line = page.wait_text(".lt-figures", "Second 2 of 4", SHOWN).await;
    assert!(
        line.contains("p50") && line.contains("uncorrected") && line.contains("/s"),
        "the live line has throughput and latency, corrected and not: {line}"
    );
    let legend = page.texts(".lt-throughput .u-legend .u-value").await;
    assert!(
        legend.iter().any(|v| v.ends_with("/s")),
        "the throughput chart has a value: {legend:?}"
    );
    let legend = page.texts(".lt-latency .u-legend .u-value").await;
    assert!(
        legend
            .iter()
            .filter(|v| v.ends_with(" ms") || v.ends_with(" µs"))
            .count()
            == 4,
        "the latency chart has p50 and p99, corrected and uncorrected: {legend:?}"
    );
    assert!(
        !page.enabled("button:has-text('Start load test')").await,
        "one run at a time from the page"
    );
    page.screenshot("running").await;

    // The report.
    page.wait_text(".lt-run h2", "Finished", SHOWN).await;
    let summary = page.wait_text(".lt-summary", "Requests", SHOWN).await;
    assert!(
        summary.contains("of 30/s asked")
            && summary.contains("Kept up")
            && summary.contains("Missed"),
        "{summary}"
    );
    let percentiles = page.text(".lt-percentiles").await;
    for row in ["p50", "p90", "p99", "p99.9", "p99.99", "max"] {
        assert!(percentiles.contains(row), "{row} in {percentiles}");
    }
    assert!(percentiles.contains("Uncorrected"), "{percentiles}");
    assert_eq!(
        page.count(".lt-spectrum canvas").await,
        1,
        "the spectrum is plotted"
    );
    let axis = page.text(".lt-spectrum").await;
    assert!(axis.contains("Latency by percentile"), "{axis}");
    page.wait_text(".lt-report", "No request failed.", SHOWN)
        .await;
    assert!(page.enabled("button:has-text('Start load test')").await);
    page.screenshot("report").await;

    // Asked failures show in the error table, by code name.
    page.select("select[name=loop]", "closed").await;
    page.fill("input[name=duration]", "1").await;
    advanced(&page, true).await;
    page.fill("input[name=concurrency]", "2").await;
    page.fill("input[name=errorRate]", "25").await;
    // Every failure code is offered, named as the control plane names it.
    let offered = page.texts("select[name=failCode] option").await;
    let named: Vec<String> = (1..=farm_api::status::MAX_CODE)
        .map(|code| format!("{code} {}", farm_api::status::name(code).expect("named")))
        .collect();
    assert_eq!(offered, named);
    page.select("select[name=failCode]", "4").await;
    page.click("button:has-text('Start load test')").await;
    page.wait_text(".lt-run h2", "Finished", SHOWN).await;
    let errors = page
        .wait_text(".lt-errors", "DEADLINE_EXCEEDED", SHOWN)
        .await;
    assert!(errors.contains("no answer in time"), "{errors}");
    let summary = page.text(".lt-summary").await;
    assert!(summary.contains("closed loop"), "{summary}");
    page.screenshot("errors").await;
    no_problems(&page).await;

    // The dark theme, narrow, stays readable.
    let narrow = browser
        .page(
            &format!("{}/#loadtest", farm.url()),
            PageOptions {
                width: 420,
                height: 1400,
                color_scheme: "dark",
            },
        )
        .await;
    live(&narrow).await;
    open_loop(&narrow, "20", "2").await;
    narrow.click("button:has-text('Start load test')").await;
    narrow.wait_text(".lt-run h2", "Finished", SHOWN).await;
    narrow.wait_for(".lt-spectrum canvas", SHOWN).await;
    narrow.screenshot("report-narrow-dark").await;
    no_problems(&narrow).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_or_leaving_the_section_ends_the_run_on_the_control_plane() {
    let test = "stop_or_leaving_the_section_ends_the_run";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let farm = Farm::start(2, &[]).await;
    farm.wait_healthy(2, Duration::from_secs(30)).await;
    let url = format!("{}/#loadtest", farm.url());

    // Two minutes at 20/s unless stopped.
    let page = browser.page(&url, PageOptions::default()).await;
    live(&page).await;
    open_loop(&page, "20", "120").await;
    page.click("button:has-text('Start load test')").await;
    measuring(&page).await;

    // Meanwhile another page may not start one, and says why.
    let other = browser.page(&url, PageOptions::default()).await;
    live(&other).await;
    open_loop(&other, "20", "2").await;
    other.click("button:has-text('Start load test')").await;
    other
        .wait_text(".lt-problems", "Another load test is running", SHOWN)
        .await;
    other.screenshot("busy").await;

    page.click("button:has-text('Stop')").await;
    page.wait_text(".lt-run h2", "Stopped", SHOWN).await;
    let status = page.text(".lt-status").await;
    assert!(
        status.contains("Stopped with the Stop button after"),
        "says it stopped, with what was measured: {status}"
    );
    assert!(
        page.count(".lt-report:visible").await == 0,
        "no report came"
    );
    assert!(
        page.text(".lt-figures").await.starts_with("Second "),
        "the last progress stays"
    );
    page.screenshot("stopped").await;
    let report = run_from_the_api(&farm, None).await;
    assert!(report.requests > 0, "{report:?}");

    // Leaving the section stops it as well.
    page.click("button:has-text('Start load test')").await;
    measuring(&page).await;
    page.click("nav a[href='#overview']").await;
    page.wait_for(".overview", SHOWN).await;
    let report = run_from_the_api(&farm, None).await;
    assert!(report.requests > 0, "{report:?}");
    page.click("nav a[href='#loadtest']").await;
    page.wait_text(".lt-status", "you left the Load test section", SHOWN)
        .await;
    page.screenshot("left").await;
    no_problems(&page).await;
    no_problems(&other).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_sees_the_load_test_form_disabled() {
    let test = "a_viewer_sees_the_load_test_form_disabled";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let farm = Farm::start(1, TOKENS).await;
    farm.with_token(Some(ADMIN))
        .wait_healthy(1, Duration::from_secs(30))
        .await;

    let page = browser
        .page(&format!("{}/#loadtest", farm.url()), PageOptions::default())
        .await;
    page.wait_text("form.signin", "needs a token", SHOWN).await;
    page.fill("input[name=token]", VIEWER).await;
    page.click("form.signin button[type=submit]").await;
    live(&page).await;
    page.wait_text(".lt-form .why-not", "only an admin token", SHOWN)
        .await;
    let start = "button:has-text('Start load test')";
    assert!(!page.enabled(start).await, "disabled for a viewer");
    for control in [
        "input[name=rate]",
        "select[name=group]",
        "select[name=mode]",
    ] {
        assert!(
            !page.enabled(control).await,
            "{control} disabled for a viewer"
        );
    }
    let why = page.attribute(start, "title").await.unwrap_or_default();
    assert!(why.contains("viewer"), "the reason is on the button: {why}");
    page.screenshot("viewer").await;
    no_problems(&page).await;
}
