//! The web client as HTTP serves it: the three files, their types, and the headers that lock
//! the page down. What the page does in a browser is `tests/browser.rs`.

mod common;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderMap, X_CONTENT_TYPE_OPTIONS};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use common::TestServer;

/// The policy the page is served with: its own script, style and connections, nothing else.
const EXPECTED_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

/// A `GET` on the test server: status, headers and body as text.
async fn get(server: &TestServer, path_and_query: &str) -> (StatusCode, HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: Uri = format!("http://{}{path_and_query}", server.addr)
        .parse()
        .unwrap();
    let response = client.get(uri).await.expect("the server answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("a UTF-8 body");
    (parts.status, parts.headers, text)
}

/// The value of header `name`, which the response must have.
fn header(headers: &HeaderMap, name: hyper::header::HeaderName) -> &str {
    headers
        .get(&name)
        .unwrap_or_else(|| panic!("a {name} header"))
        .to_str()
        .unwrap()
}

/// `GET /` is the chat page, as HTML, under the strict Content-Security-Policy.
#[tokio::test]
async fn the_root_serves_the_page_with_its_security_policy() {
    let server = TestServer::start().await;
    let (status, headers, body) = get(&server, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&headers, CONTENT_SECURITY_POLICY), EXPECTED_CSP);
    assert_eq!(header(&headers, X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(body, INDEX_HTML);
}

/// An invite link (`/?room=CODE`) opens the same page; the script reads the code from the URL.
#[tokio::test]
async fn an_invite_link_serves_the_page() {
    let server = TestServer::start().await;
    let (status, _, body) = get(&server, "/?room=K7M2QX").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, INDEX_HTML);
}

/// The script and the stylesheet the page links to are served with their own types (a script
/// under `nosniff` runs only when it is declared as one).
#[tokio::test]
async fn the_script_and_stylesheet_are_served_with_their_types() {
    let server = TestServer::start().await;
    for (path, content_type, expected) in [
        ("/app.js", "text/javascript", APP_JS),
        ("/style.css", "text/css", STYLE_CSS),
    ] {
        let (status, headers, body) = get(&server, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            header(&headers, CONTENT_TYPE).starts_with(content_type),
            "{path} is {content_type}"
        );
        assert_eq!(body, expected, "{path}");
        assert!(
            INDEX_HTML.contains(&format!("\"{path}\"")),
            "the page links {path}"
        );
    }
}

/// The page needs nothing the policy forbids: no inline script, inline style or event-handler
/// attribute, which the browser would silently refuse to run.
#[test]
fn the_page_has_no_inline_script_or_style() {
    let html = INDEX_HTML.to_ascii_lowercase();
    for (index, _) in html.match_indices("<script") {
        let tag = &html[index..index + html[index..].find('>').unwrap()];
        assert!(tag.contains(" src="), "a script without src: {tag}");
    }
    assert!(!html.contains("<style"), "an inline <style> block");
    assert!(!html.contains(" style="), "an inline style attribute");
    let handler = html.split_whitespace().find(|word| {
        word.split_once('=').is_some_and(|(name, _)| {
            name.starts_with("on") && name.chars().all(|c| c.is_ascii_alphabetic())
        })
    });
    assert_eq!(handler, None, "an inline event handler attribute");
    assert!(!html.contains("javascript:"), "a javascript: URL");
}

/// The script never turns text into markup or code: names and messages from other people go
/// into the page as text, so `<img src=x onerror=…>` stays characters on the screen.
#[test]
fn the_script_never_parses_strings_as_html_or_code() {
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!APP_JS.contains(sink), "app.js uses {sink}");
    }
}

/// The page names its icon, and the icon is served (also at /favicon.ico, where browsers look
/// when a page names none), so a fresh browser shows no 404 for it.
#[tokio::test]
async fn the_page_has_an_icon() {
    let server = TestServer::start().await;
    assert!(INDEX_HTML.contains(r#"<link rel="icon" href="/favicon.svg" type="image/svg+xml">"#));
    for path in ["/favicon.svg", "/favicon.ico"] {
        let (status, headers, body) = get(&server, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, CONTENT_TYPE), "image/svg+xml", "{path}");
        assert!(body.starts_with("<svg"), "{path}");
    }
}
