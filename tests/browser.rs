//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver) logs
//! in, sees a new critical callback request appear without a reload, with its cue, and marks it
//! done.
//!
//! Needs a Chromium and its ChromeDriver: `LIFELINE_CHROMIUM` and `LIFELINE_CHROMEDRIVER`, else
//! the project cache `scripts/fetch-browser.sh` fills (`scripts/test.sh` runs it), else Debian's
//! `/usr/bin/chromium` and `/usr/bin/chromedriver`. Without one this test fails;
//! `LIFELINE_SKIP_BROWSER=1` skips it on purpose (and says so).

mod common;

use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use common::{Engine, TestApp};
use fantoccini::{Client, ClientBuilder, Locator};
use lifeline::ops::admin::auth::hash_password;
use lifeline::store::NewCallbackRequest;
use lifeline::tools::urgency::Urgency;
use serde_json::json;
use uuid::Uuid;

on_both_engines!(staff_see_a_new_critical_callback_live_and_mark_it_done);

const WAIT: Duration = Duration::from_secs(30);

/// `tool` (`chromium` or `chromedriver`): the environment variable, else the project cache,
/// else the system's.
fn browser_tool(variable: &str, tool: &str) -> String {
    if let Ok(path) = std::env::var(variable) {
        return path;
    }
    let cached = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/browser/bin")
        .join(tool);
    if cached.exists() {
        return cached.display().to_string();
    }
    format!("/usr/bin/{tool}")
}

/// chromedriver on a free port, killed with the test.
struct Driver {
    _process: tokio::process::Child,
    url: String,
    _profile: tempfile::TempDir,
}

async fn start_driver() -> Option<Driver> {
    if std::env::var("LIFELINE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("LIFELINE_SKIP_BROWSER=1: browser test skipped on purpose");
        return None;
    }
    let driver = browser_tool("LIFELINE_CHROMEDRIVER", "chromedriver");
    if !std::path::Path::new(&driver).exists() {
        panic!(
            "{driver} not found: run scripts/fetch-browser.sh (scripts/test.sh does) to fetch \
             Chromium into .cache/browser, or set LIFELINE_CHROMIUM and LIFELINE_CHROMEDRIVER, \
             or set LIFELINE_SKIP_BROWSER=1 to skip this test on purpose"
        );
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let process = tokio::process::Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    // Ready when it answers its status endpoint.
    tokio::time::timeout(WAIT, async {
        loop {
            if reqwest::get(format!("{url}/status")).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("chromedriver did not start");
    Some(Driver {
        _process: process,
        url,
        _profile: tempfile::tempdir().unwrap(),
    })
}

async fn browser(driver: &Driver) -> Client {
    let binary = browser_tool("LIFELINE_CHROMIUM", "chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=420,900",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("open a Chromium session")
}

async fn staff_see_a_new_critical_callback_live_and_mark_it_done(engine: Engine) {
    let Some(driver) = start_driver().await else {
        return;
    };
    let password = "correct horse battery";
    let app = TestApp::start_with_sections(
        engine,
        &format!(
            "[[staff]]\nusername = \"night-nurse\"\npassword_hash = \"{}\"\n",
            hash_password(password).unwrap()
        ),
    )
    .await;
    let c = browser(&driver).await;
    let result = async {
        c.goto(&app.http_url("/admin")).await?;
        // Not logged in: the login form.
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#username"))
            .await?;
        c.find(Locator::Css("#username"))
            .await?
            .send_keys("night-nurse")
            .await?;
        c.find(Locator::Css("#password"))
            .await?
            .send_keys(password)
            .await?;
        c.find(Locator::Css("#login")).await?.click().await?;
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#callbacks"))
            .await?;
        let empty = c.find(Locator::Css("#empty")).await?.text().await?;
        assert_eq!(empty, "Nobody is waiting for a callback.");
        // Let the page's live feed connect before the request is queued.
        tokio::time::sleep(Duration::from_millis(500)).await;

        // A failed transfer, queued while the page is open.
        let id = Uuid::new_v4();
        app.store
            .insert_callback_request(&NewCallbackRequest {
                id,
                created_at: Utc::now(),
                tenant_id: "riverside".into(),
                call_id: None,
                call_sid: None,
                tool_call_log_id: None,
                transfer_attempt_id: None,
                reason: "failed_transfer",
                callback_number: "+14168189171".into(),
                caller_name: Some("Jeremy Greven".into()),
                first_name: None,
                last_name: None,
                pet_name: Some("Tommie".into()),
                species: Some("Cat".into()),
                breed: None,
                age: None,
                concern_description: Some("hit by a car, breathing fast".into()),
                urgency_reason: None,
                urgency: Urgency::Critical,
                metadata: json!({}),
                text_caller: true,
            })
            .await
            .unwrap();
        let card_css = format!("article[data-id=\"{id}\"]");
        let card = c
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(&card_css))
            .await?;
        let text = card.text().await?;
        assert!(text.contains("Jeremy Greven"), "{text}");
        assert!(text.contains("CRITICAL"), "{text}");
        let tel = c
            .find(Locator::Css(&format!("{card_css} .number a")))
            .await?
            .attr("href")
            .await?;
        assert_eq!(tel.as_deref(), Some("tel:+14168189171"));
        // The visible cue: the banner shows and the title says so.
        let banner = c.find(Locator::Css("#cue")).await?;
        assert!(
            banner.is_displayed().await?,
            "the critical banner is visible"
        );
        assert!(
            c.title().await?.starts_with("(!) "),
            "the tab title flags it"
        );
        assert!(
            c.find(Locator::Css("#empty")).await.is_err(),
            "the empty-list note is gone"
        );

        // Mark it done.
        c.find(Locator::Css(&format!(
            "{card_css} form.done input[name=note]"
        )))
        .await?
        .send_keys("called back, on the way to the ER")
        .await?;
        c.find(Locator::Css(&format!("{card_css} form.done button")))
            .await?
            .click()
            .await?;
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#empty"))
            .await?;
        Ok::<_, fantoccini::error::CmdError>(id)
    }
    .await;
    let _ = c.close().await;
    let id = result.expect("browser steps");
    let row = app.store.callback_request(id).await.unwrap().unwrap();
    assert_eq!(row.resolved_by.as_deref(), Some("night-nurse"));
    assert_eq!(
        row.resolution_note.as_deref(),
        Some("called back, on the way to the ER")
    );
    let trail = app.store.audit_trail(id).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].action, "resolve");
}
