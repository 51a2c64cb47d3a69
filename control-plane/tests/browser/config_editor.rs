//! The dashboard's Configuration section, in chromium, against a control
//! plane with process nodes: a document saved from the page reaches every
//! node, a save that lost a compare-and-set shows the version that won
//! with a line diff against the edit, a syntax error is placed and keeps
//! the document from being sent, and a viewer cannot write. Screenshots
//! go to `target/screenshots/<test>/`.

use std::time::Duration;

use farm_api::v1::NodeInfo;
use farm_testkit::{
    ADMIN, Farm, TOKENS, VIEWER,
    browser::{Browser, Page, PageOptions},
};
use serde_json::json;

use crate::{SHOWN, no_problems};

const EDITOR: &str = "textarea[aria-label='Configuration (JSON)']";
const SAVE: &str = ".editor-section button.save";

/// Opens the Configuration section on `scope` and waits for its document.
async fn open<'b>(browser: &'b Browser, farm: &Farm, scope: &str) -> Page<'b> {
    let page = browser
        .page(
            &format!("{}/#config/{scope}", farm.url()),
            PageOptions::default(),
        )
        .await;
    page.wait_text(".link", "live", SHOWN).await;
    page.wait_text(".config-status", &format!("{scope}:"), SHOWN)
        .await;
    page
}

/// What the editor holds.
async fn editor_text(page: &Page<'_>) -> String {
    page.evaluate(
        "(selector) => document.querySelector(selector).value",
        json!(EDITOR),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

fn versions(nodes: &[NodeInfo]) -> Vec<(String, u64)> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.config_version))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_saved_from_the_page_reaches_every_node() {
    let test = "a_config_saved_from_the_page_reaches_every_node";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let farm = Farm::start(3, &[]).await;
    farm.wait_healthy(3, Duration::from_secs(30)).await;
    let page = open(&browser, &farm, "global").await;
    page.wait_text(".config-status", "never written", SHOWN)
        .await;
    assert_eq!(editor_text(&page).await, "{}\n");
    assert!(!page.enabled(SAVE).await, "nothing to save before an edit");
    page.wait_text(".coverage", "applies to 3 nodes", SHOWN)
        .await;
    page.screenshot("empty").await;

    page.fill(
        EDITOR,
        "{\n  \"workload\": {\"delay_ms\": 3, \"response_bytes\": 256},\n  \"team\": \"blue\"\n}\n",
    )
    .await;
    page.wait_text(".json-check", "A valid JSON object", SHOWN)
        .await;
    page.wait_text(".cas-note", "still at version 0", SHOWN)
        .await;
    assert!(page.enabled(SAVE).await);
    page.click(SAVE).await;
    let saved = page
        .wait_text(".save-result", "Saved as version", SHOWN)
        .await;
    let version: u64 = saved
        .split("Saved as version ")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a version in {saved:?}"));

    // The control plane holds exactly the document, and every node applies it.
    let current = farm.current_config("global").await;
    assert_eq!(current.version, version);
    assert_eq!(
        current.data.map(|d| farm_api::json::struct_to_json(&d)),
        Some(
            json!({"workload": {"delay_ms": 3, "response_bytes": 256}, "team": "blue"})
                .as_object()
                .cloned()
                .expect("an object")
        )
    );
    let nodes = farm
        .wait_nodes("every node on the saved version", SHOWN, |nodes| {
            nodes.len() == 3 && nodes.iter().all(|n| n.config_version == version)
        })
        .await;
    assert!(
        nodes.iter().all(|n| n.config_version == version),
        "{:?}",
        versions(&nodes)
    );

    // The page sees them arrive: one applied version, held by all three.
    page.wait_text(
        ".coverage",
        &format!("Version {version} of global: applied by 3 of 3 nodes"),
        SHOWN,
    )
    .await;
    page.wait_count(".applied-table tbody tr", 1, SHOWN).await;
    let row = format!(".applied-table tr[data-version='{version}']");
    assert_eq!(page.text(&format!("{row} td.count")).await, "3");
    page.click(&format!("{row} summary")).await;
    let names = page.text(&format!("{row} .names-on p")).await;
    assert_eq!(names, "node-001, node-002, node-003");
    // The editor shows the saved document as the control plane holds it.
    page.wait_text(
        ".config-status",
        &format!("version {version}, written"),
        SHOWN,
    )
    .await;
    assert!(!page.enabled(SAVE).await, "saved: nothing left to save");

    // The history has it (and the empty start); their diff lists each
    // top-level key added, an added object as one.
    page.wait_count(".history-table tbody tr", 2, SHOWN).await;
    page.wait_text(
        ".compare h3",
        &format!("From version 0 to version {version}: 2 keys changed"),
        SHOWN,
    )
    .await;
    let paths = page.texts(".path-diff tbody tr").await;
    assert!(
        paths.len() == 2
            && paths[0].starts_with("team\tadded")
            && paths[1].starts_with("workload\tadded"),
        "{paths:#?}"
    );

    // A node's effective configuration, by name.
    page.fill("input[aria-label='Node id or name']", "node-002")
        .await;
    page.click(".applied-section form button[type=submit]")
        .await;
    let effective = page
        .wait_text(".effective-result", "effective version", SHOWN)
        .await;
    assert!(
        effective.contains(&format!("effective version {version}"))
            && effective.contains("applied"),
        "{effective}"
    );
    assert!(effective.contains("\"team\": \"blue\""), "{effective}");
    page.screenshot("saved-and-applied").await;
    no_problems(&page).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_compare_and_set_shows_the_winner_against_the_edit() {
    let test = "a_lost_compare_and_set_shows_the_winner_against_the_edit";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let farm = Farm::start(2, &[]).await;
    farm.wait_healthy(2, Duration::from_secs(30)).await;
    let first = farm
        .put_config(
            "global",
            json!({"team": "blue", "workload": {"delay_ms": 1}}),
        )
        .await;
    let page = open(&browser, &farm, "global").await;
    page.wait_text(".config-status", &format!("version {first}"), SHOWN)
        .await;

    // This page edits; meanwhile another writer saves through the API.
    page.fill(
        EDITOR,
        "{\n  \"team\": \"green\",\n  \"workload\": {\"delay_ms\": 1}\n}\n",
    )
    .await;
    let theirs = farm
        .put_config(
            "global",
            json!({"team": "blue", "workload": {"delay_ms": 9}}),
        )
        .await;
    assert!(theirs > first);
    page.click(SAVE).await;
    let panel = page
        .wait_text(".conflict", "Your save was refused", SHOWN)
        .await;
    assert!(
        panel.contains(&format!("global is now at version {theirs}"))
            && panel.contains(&format!(
                "global is at version {theirs}, not the expected {first}"
            )),
        "the current version and why: {panel}"
    );
    // The diff: theirs on the − side, the edit on the + side.
    let removed = page.texts(".conflict .diff-removed td.code").await;
    let added = page.texts(".conflict .diff-added td.code").await;
    assert!(
        removed.iter().any(|l| l.contains("\"delay_ms\": 9"))
            && removed.iter().any(|l| l.contains("\"team\": \"blue\"")),
        "{removed:?}"
    );
    assert!(
        added.iter().any(|l| l.contains("\"delay_ms\": 1"))
            && added.iter().any(|l| l.contains("\"team\": \"green\"")),
        "{added:?}"
    );
    assert!(
        !removed.iter().chain(&added).any(|l| l.contains("workload")),
        "a change of layout only is not a difference: {removed:?} {added:?}"
    );
    assert_eq!(
        farm.current_config("global").await.version,
        theirs,
        "nothing was written over theirs"
    );
    page.screenshot("conflict").await;

    // Put the edit onto their version: it now expects theirs, and wins.
    page.click(".conflict button.retry").await;
    let saved = page
        .wait_text(".save-result", "Saved as version", SHOWN)
        .await;
    let current = farm.current_config("global").await;
    assert!(current.version > theirs, "{saved}");
    assert!(saved.contains(&current.version.to_string()), "{saved}");
    assert_eq!(
        current.data.map(|d| farm_api::json::struct_to_json(&d)),
        json!({"team": "green", "workload": {"delay_ms": 1}})
            .as_object()
            .cloned()
    );
    page.wait_gone(".conflict", SHOWN).await;

    // Another conflict, this time taking theirs: the edit is dropped.
    page.fill(EDITOR, "{\"team\": \"red\"}").await;
    let again = farm.put_config("global", json!({"team": "yellow"})).await;
    page.click(SAVE).await;
    page.wait_text(".conflict", "Your save was refused", SHOWN)
        .await;
    page.click(".conflict button.take-theirs").await;
    page.wait_gone(".conflict", SHOWN).await;
    assert_eq!(editor_text(&page).await, "{\n  \"team\": \"yellow\"\n}\n");
    page.wait_text(".config-status", &format!("version {again}"), SHOWN)
        .await;
    assert_eq!(farm.current_config("global").await.version, again);
    page.screenshot("took-theirs").await;
    no_problems(&page).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_syntax_error_is_marked_and_nothing_is_sent() {
    let test = "a_syntax_error_is_marked_and_nothing_is_sent";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let farm = Farm::start(1, &[]).await;
    farm.wait_healthy(1, Duration::from_secs(30)).await;
    let version = farm.put_config("global", json!({"team": "blue"})).await;
    let page = open(&browser, &farm, "global").await;
    page.wait_text(".config-status", &format!("version {version}"), SHOWN)
        .await;

    // A missing comma on line 3.
    page.fill(EDITOR, "{\n  \"team\": \"green\"\n  \"size\": 3\n}\n")
        .await;
    let message = page
        .wait_text(".json-check", "Line 3, column 3", SHOWN)
        .await;
    assert!(
        message.contains("expected ',' between two members"),
        "{message}"
    );
    assert!(
        !page.enabled(SAVE).await,
        "sending is disabled while invalid"
    );
    assert_eq!(
        page.attribute(EDITOR, "aria-invalid").await.as_deref(),
        Some("true")
    );
    let band = page
        .evaluate(
            "() => { const band = document.querySelector('.error-band'); const box = document.querySelector('.json-editor textarea').getBoundingClientRect(); const r = band.getBoundingClientRect(); return { hidden: band.hidden, line: Math.round((r.top - box.top - 6) / r.height) + 1 }; }",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(band["hidden"], false, "{band}");
    assert_eq!(band["line"], 3, "the band marks line 3: {band}");
    page.screenshot("syntax-error").await;

    // The same in a narrow window and the dark theme.
    let narrow = browser
        .page(
            &format!("{}/#config/global", farm.url()),
            PageOptions {
                width: 420,
                height: 900,
                color_scheme: "dark",
            },
        )
        .await;
    narrow
        .wait_text(".config-status", &format!("version {version}"), SHOWN)
        .await;
    narrow.fill(EDITOR, "{\n  \"team\": green\n}\n").await;
    narrow
        .wait_text(".json-check", "Line 2, column 11", SHOWN)
        .await;
    narrow.screenshot("syntax-error-narrow-dark").await;
    no_problems(&narrow).await;

    // Not an object at the top.
    page.fill(EDITOR, "[1, 2]").await;
    page.wait_text(".json-check", "a configuration is a JSON object", SHOWN)
        .await;
    assert!(!page.enabled(SAVE).await);

    // A forced click sends nothing either.
    page.force_click(SAVE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(farm.versions("global").await, vec![version]);

    // Fixed: sendable again, and the control plane's own checks are shown in words.
    page.fill(EDITOR, "{\"workload\": {\"delay_ms\": -5}}")
        .await;
    page.wait_text(".json-check", "A valid JSON object", SHOWN)
        .await;
    assert!(page.enabled(SAVE).await);
    page.click(SAVE).await;
    let refused = page.wait_text(".save-result", "Not saved", SHOWN).await;
    assert!(
        refused.contains("The request was refused as invalid")
            && refused.contains("workload.delay_ms is -5"),
        "{refused}"
    );
    assert_eq!(farm.versions("global").await, vec![version]);
    page.screenshot("refused-by-the-control-plane").await;
    no_problems(&page).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_reads_history_and_diffs_and_an_admin_rolls_back() {
    let test = "a_viewer_reads_history_and_an_admin_rolls_back";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let farm = Farm::start(2, TOKENS).await;
    let api = farm.with_token(Some(ADMIN));
    api.wait_healthy(2, Duration::from_secs(30)).await;
    let v1 = api
        .put_config("group:default", json!({"workload": {"delay_ms": 2}}))
        .await;
    let v2 = api
        .put_config(
            "group:default",
            json!({"workload": {"delay_ms": 4}, "team": "blue"}),
        )
        .await;

    // A viewer: reads everything, writes nothing, and is told why.
    let viewer = browser
        .page(
            &format!("{}/#config/group:default", farm.url()),
            PageOptions::default(),
        )
        .await;
    viewer.fill("input[name=token]", VIEWER).await;
    viewer.click("form.signin button[type=submit]").await;
    viewer
        .wait_text(".config-status", &format!("version {v2}"), SHOWN)
        .await;
    viewer
        .wait_text(
            ".compare h3",
            &format!("From version {v1} to version {v2}: 2 keys changed"),
            SHOWN,
        )
        .await;
    let paths = viewer.texts(".path-diff tbody tr").await;
    assert_eq!(paths.len(), 2, "{paths:#?}");
    assert!(
        paths[0].contains("team") && paths[0].contains("added"),
        "{paths:#?}"
    );
    assert!(
        paths[1].contains("workload.delay_ms") && paths[1].contains("changed"),
        "{paths:#?}"
    );
    assert!(!viewer.enabled(SAVE).await);
    let why = viewer.attribute(SAVE, "title").await.unwrap_or_default();
    assert!(why.contains("viewer"), "{why}");
    let rollback = format!(".history-table tr[data-version='{v1}'] button.rollback");
    assert!(!viewer.enabled(&rollback).await);
    viewer
        .wait_text(".editor-section .why-not", "only an admin token", SHOWN)
        .await;
    viewer.screenshot("viewer").await;
    no_problems(&viewer).await;

    // An admin rolls back to the first version, confirmed.
    let admin = browser
        .page(
            &format!("{}/#config/group:default", farm.url()),
            PageOptions::default(),
        )
        .await;
    admin.fill("input[name=token]", ADMIN).await;
    admin.click("form.signin button[type=submit]").await;
    admin
        .wait_text(".config-status", &format!("version {v2}"), SHOWN)
        .await;
    admin.click(&rollback).await;
    admin
        .wait_text(
            "dialog.confirm",
            &format!("Roll group:default back to version {v1}?"),
            SHOWN,
        )
        .await;
    admin.click("dialog.confirm button[value=yes]").await;
    let done = admin
        .wait_text(".rollback-result", "Rolled back", SHOWN)
        .await;
    let current = api.current_config("group:default").await;
    assert!(current.version > v2, "{done}");
    assert_eq!(
        current.data.map(|d| farm_api::json::struct_to_json(&d)),
        json!({"workload": {"delay_ms": 2}}).as_object().cloned()
    );
    // Both pages follow: the untouched editors show the restored document.
    for page in [&admin, &viewer] {
        page.wait_text(
            ".config-status",
            &format!("version {}", current.version),
            SHOWN,
        )
        .await;
        page.wait_text(
            &format!(".history-table tr[data-version='{}']", current.version),
            &format!("rollback to version {v1}"),
            SHOWN,
        )
        .await;
    }
    assert_eq!(
        editor_text(&viewer).await,
        "{\n  \"workload\": {\n    \"delay_ms\": 2\n  }\n}\n"
    );
    api.wait_nodes("both nodes on the rollback", SHOWN, |nodes| {
        nodes.len() == 2 && nodes.iter().all(|n| n.config_version == current.version)
    })
    .await;
    admin
        .wait_text(".coverage", "applied by 2 of 2 nodes", SHOWN)
        .await;
    admin.screenshot("rolled-back").await;
    no_problems(&admin).await;
}
