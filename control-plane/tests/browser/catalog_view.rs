//! The catalog in the dashboard: names found by prefix, and a name's
//! dependencies and dependents, each a link to its own entry.

use farm_api::v1::IndexRequest;
use farm_testkit::{
    Farm,
    browser::{Browser, PageOptions},
};

use crate::SHOWN;

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_is_searched_and_followed_from_the_page() {
    let Some(browser) = Browser::launch("the_catalog_is_searched_and_followed").await else {
        return;
    };
    let farm = Farm::start(0, &[]).await;
    let mut catalog = farm.catalog();
    for (name, dependencies) in [
        ("zlib", vec![]),
        ("libpng", vec!["zlib"]),
        ("libsigc++", vec![]),
        ("gtk+", vec!["libpng", "libsigc++"]),
    ] {
        catalog
            .index(IndexRequest {
                name: name.to_owned(),
                dependencies: dependencies.into_iter().map(str::to_owned).collect(),
            })
            .await
            .expect("Index");
    }

    let page = browser
        .page(&format!("{}/#catalog", farm.url()), PageOptions::default())
        .await;
    page.wait_text(".catalog [role=status]", "4 names indexed", SHOWN)
        .await;
    page.fill("input[aria-label='Search names']", "lib").await;
    page.wait_text(
        ".catalog [role=status]",
        "2 starting with that, of 4 names indexed",
        SHOWN,
    )
    .await;
    assert_eq!(
        page.texts(".catalog ul.names li").await,
        ["libpng", "libsigc++"]
    );
    page.click(".catalog ul.names a:has-text('libpng')").await;
    page.wait_text(".entry h2", "libpng", SHOWN).await;
    let entry = page.wait_text(".entry", "Depended on by (1)", SHOWN).await;
    assert!(
        entry.contains("Depends on (1)") && entry.contains("zlib"),
        "{entry}"
    );
    assert!(entry.contains("gtk+"), "{entry}");
    // Follow a dependent: names that need escaping in a URL work too.
    page.click(".entry a:has-text('gtk+')").await;
    let entry = page.wait_text(".entry h2", "gtk+", SHOWN).await;
    assert_eq!(entry, "gtk+");
    page.wait_text(".entry", "Depends on (2)", SHOWN).await;
    page.screenshot("catalog").await;
    page.fill("input[aria-label='Search names']", "nothing-")
        .await;
    page.wait_text(".catalog ul.names", "No name starts with that.", SHOWN)
        .await;
    assert!(page.problems().await.is_empty());
}
