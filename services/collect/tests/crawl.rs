//! The crawler against a local HTTP server the test starts: robots.txt, the rate limit, depth
//! and page limits, a page that errors, a redirect loop, canonical duplicates, an unreachable
//! host.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use quark_collect::crawl::{CrawlOptions, Crawler};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Log = Arc<Mutex<Vec<(String, Instant)>>>;

fn page(body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<html><body>{body}</body></html>"),
    )
        .into_response()
}

async fn site(State(log): State<Log>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    log.lock().unwrap().push((path.clone(), Instant::now()));
    match path.as_str() {
        "/robots.txt" => "User-agent: *\nDisallow: /private\n".into_response(),
        "/" => page(
            r#"<p>Home page text.</p><a href="/a">a</a> <a href="/a#part">a again</a> <a href="/b">b</a>
            <a href="/private/secret">private</a> <a href="/error">error</a> <a href="/loop">loop</a>
            <a href="/copy">copy</a> <a href="http://elsewhere.invalid/x">elsewhere</a>"#,
        ),
        "/a" => page(r#"<p>Page A text.</p><a href="/deep">deeper</a>"#),
        "/b" => page("<p>Page B text.</p>"),
        // The same page under another URL, declaring the original as canonical.
        "/copy" => ([(header::CONTENT_TYPE, "text/html")], "<html><head><link rel=canonical href=\"/b\"></head><body><p>Page B text.</p></body></html>").into_response(),
        "/deep" => page("<p>Too deep.</p>"),
        "/error" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "/loop" => Redirect::temporary("/loop2").into_response(),
        "/loop2" => Redirect::temporary("/loop").into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve() -> (String, Log) {
    let log: Log = Arc::default();
    let app = Router::new().fallback(site).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), log)
}

#[tokio::test]
async fn crawls_politely_within_its_limits() {
    let (base, log) = serve().await;
    let delay = Duration::from_millis(150);
    let options = CrawlOptions {
        seeds: vec![
            format!("{base}/"),
            "http://127.0.0.1:1/".into(),
            "ftp://x/".into(),
        ],
        max_depth: 1,
        delay,
        ..Default::default()
    };
    let collected = Crawler::new(options.clone()).unwrap().crawl().await;

    let pages: Vec<(String, &str)> = collected
        .documents
        .iter()
        .map(|d| (d.id.trim_start_matches(&base).to_string(), d.text.as_str()))
        .collect();
    assert_eq!(
        pages,
        vec![
            (
                "/".to_string(),
                "Home page text.\na a again b private error loop copy elsewhere"
            ),
            ("/a".to_string(), "Page A text.\ndeeper"),
            ("/b".to_string(), "Page B text."),
        ]
    );
    let skipped: Vec<(String, String)> = collected
        .skipped
        .iter()
        .map(|s| {
            (
                s.source.trim_start_matches(&base).to_string(),
                s.reason.clone(),
            )
        })
        .collect();
    let reason = |source: &str| {
        skipped
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, r)| r.as_str())
            .unwrap_or("")
    };
    assert_eq!(reason("ftp://x/"), "not an http(s) URL");
    assert!(
        reason("http://127.0.0.1:1/").starts_with("robots.txt: unreachable"),
        "{skipped:?}"
    );
    assert_eq!(reason("/private/secret"), "disallowed by robots.txt");
    assert_eq!(reason("/error"), "HTTP 500");
    assert_eq!(reason("/loop"), "redirect loop");
    assert_eq!(reason("/copy"), format!("duplicate of {base}/b"));

    let log = log.lock().unwrap().clone();
    let paths: Vec<&str> = log.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths.iter().filter(|p| **p == "/robots.txt").count(),
        1,
        "robots.txt read once"
    );
    assert!(
        !paths.contains(&"/private/secret"),
        "a disallowed page is never requested"
    );
    assert!(!paths.contains(&"/deep"), "depth 2 is beyond max_depth 1");
    assert_eq!(
        paths.iter().filter(|p| **p == "/a").count(),
        1,
        "/a#part is /a"
    );
    // One request per host per delay (the redirect loop's hops all belong to one request).
    let starts: Vec<Instant> = log
        .iter()
        .filter(|(p, _)| p != "/loop" && p != "/loop2")
        .map(|(_, t)| *t)
        .collect();
    assert!(starts.len() >= 6);
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= delay - Duration::from_millis(5),
            "requests {:?} apart",
            pair[1] - pair[0]
        );
    }

    // The page budget.
    let limited = Crawler::new(CrawlOptions {
        max_pages: 2,
        seeds: vec![format!("{base}/")],
        ..options
    })
    .unwrap()
    .crawl()
    .await;
    assert_eq!(limited.documents.len(), 2);
}
