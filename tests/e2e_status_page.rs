//! The status page (`/` on the HTTP listener) in a real browser: Debian's headless
//! Chromium, driven through chromedriver's WebDriver HTTP API, against a real 3-node
//! cluster. The page is loaded from the leader; the leader is killed; the page, still the
//! one loaded from the dead node, must show the new leader and the old one unreachable.
//! `PAXOSDB_STATUS_SCREENSHOT=path.png` keeps a screenshot (docs/status-page.png was made
//! so).

mod common;

use common::tools::installed;
use common::{free_ports, Cluster};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver process and one headless Chromium session in it.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        for tool in ["chromedriver", "chromium"] {
            assert!(
                installed(tool),
                "{tool} is not installed; run scripts/setup (Debian: chromium chromium-driver)"
            );
        }
        let port = free_ports(1)[0];
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // A new process group would outlive a failed test: chromedriver is killed in drop.
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while b.call("GET", "/status", None)["value"]["ready"] != true {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,800"],
            },
        }}});
        let r = b.call("POST", "/session", Some(caps));
        b.session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        b
    }

    /// One WebDriver call (curl, so that a dead page or driver cannot hang the test).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "20", "-X", method, &url]);
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = cmd.output().expect("run curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn goto(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        let r = self.call("POST", &path, Some(json!({ "url": url })));
        assert!(r["value"].is_null(), "navigating to {url}: {r}");
    }

    /// Runs `js` in the page; its return value.
    fn eval(&self, js: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, Some(json!({ "script": js, "args": [] })))["value"].clone()
    }

    fn screenshot(&self, path: &str) {
        use base64::Engine;
        let r = self.call(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().expect("a screenshot"))
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The leader the page shows, and each member row's role.
fn shown(b: &Browser) -> (String, Vec<(String, String)>) {
    let v = b.eval(
        "return [document.getElementById('leader').dataset.id || '', \
         [...document.querySelectorAll('#members tbody tr')] \
           .map(tr => [tr.dataset.node, tr.querySelector('td.role').textContent])];",
    );
    let leader = v[0].as_str().unwrap_or("").to_string();
    let rows = (v[1].as_array().cloned().unwrap_or_default().iter())
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or("").to_string();
            (s(0), s(1))
        })
        .collect();
    (leader, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_new_leader_after_the_one_it_came_from_died() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    for i in 0..200 {
        client
            .put(format!("k{i}").as_bytes(), b"v", false)
            .await
            .unwrap();
    }
    let b = Browser::start();
    let mut origin = c.leader().await;
    b.goto(&format!("http://{}/", c.node(origin).http_addr));
    // The page must show the leader and every member up. The leader is looked up again
    // on every look: if it moved (a loaded machine), the page is loaded again from the
    // new one, so that the node killed below is always the one that served the page.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let leader = loop {
        let (l, rows) = shown(&b);
        let now = c.wait_for_leader().await;
        let all_up = rows.len() == 3 && rows.iter().all(|(_, r)| r != "unreachable");
        if l == now.to_string() && all_up && now == origin {
            break now;
        }
        if now != origin {
            origin = now;
            b.goto(&format!("http://{}/", c.node(origin).http_addr));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page does not show node {now} leading with every member up within 45 s: \
             leader {l:?}, rows {rows:?}; the page says:\n{}",
            b.eval("return document.body.innerText;"),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Ok(path) = std::env::var("PAXOSDB_STATUS_SCREENSHOT") {
        // Some history first: the requests/s column and its line fill in.
        for i in 0..2000 {
            client
                .put(format!("k{}", i % 100).as_bytes(), b"w", false)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(6)).await; // a screenshot, not a check
        b.screenshot(&path);
    }

    c.kill(leader);
    // The leader may move more than once after the kill (a first winner can lose its
    // lead again at once, CI saw it): each look compares the page with the cluster now.
    let dead = leader.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let (l, rows, new) = loop {
        let (l, rows) = shown(&b);
        let new = c.wait_for_leader().await;
        assert_ne!(new, leader);
        let down = rows.iter().any(|(n, r)| *n == dead && r == "unreachable");
        if l == new.to_string() && down {
            break (l, rows, new);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page does not show node {new} leading and node {dead} unreachable \
             within 45 s: leader {l:?}, rows {rows:?}; the page says:\n{}\nthe nodes:\n{}",
            b.eval("return document.body.innerText;"),
            (1..=3u64)
                .filter(|&id| id != leader)
                .map(|id| c.log_of(id))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(l, new.to_string());
    // The page still came from the dead node: it answers nothing itself.
    let origin = b.eval("return location.host;");
    assert_eq!(origin, json!(c.node(leader).http_addr), "{rows:?}");
}
