//! The web client as HTTP serves it: the page, its script's modules, its stylesheet and icon,
//! their types, and the headers that lock the page down. What the page does in a browser is
//! `tests/browser.rs`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderMap, HeaderName, REFERRER_POLICY,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use common::TestServer;

/// The policy the page is served with: its own script, style and connections, nothing else.
const EXPECTED_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; manifest-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../static/index.html");
const STYLE_CSS: &str = include_str!("../static/style.css");

/// The module index.html loads; it imports the others.
const ENTRY_MODULE: &str = "/js/main.js";

/// The type every module must be served with: a browser runs a module only if it is JavaScript.
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Every module of the script, read from `static/js/` and its subfolders (`vendor/`) now (so a
/// new file is covered without being listed here): the path the page loads it from, and its
/// contents.
fn module_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("static/js");
    let mut modules = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "js") {
                let relative = path.strip_prefix(&root).unwrap().to_str().unwrap();
                let text = std::fs::read_to_string(&path).unwrap();
                modules.push((format!("/js/{relative}"), text));
            }
        }
    }
    modules.sort();
    assert!(!modules.is_empty(), "no modules in {}", root.display());
    modules
}

/// What a module imports: the specifier of each `import … from '…'` (or `export … from`, or a
/// bare `import '…'`), also when the `from` closes an import that spans several lines.
fn imports(module: &str) -> Vec<&str> {
    module
        .lines()
        .map(str::trim_start)
        .filter(|line| {
            ["import ", "export ", "} from "]
                .iter()
                .any(|p| line.starts_with(p))
        })
        .filter_map(|line| {
            let rest = match line.rfind(" from ") {
                Some(index) => &line[index + " from ".len()..],
                None => line.strip_prefix("import ")?,
            };
            let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
            let rest = &rest[1..];
            Some(&rest[..rest.find(quote)?])
        })
        .collect()
}

/// The path `specifier` (relative, as `./x.js` or `../x.js`) names from the module at `base`.
fn resolve(base: &str, specifier: &str) -> String {
    assert!(
        specifier.starts_with("./") || specifier.starts_with("../"),
        "{base} imports {specifier:?}: without an import map, a browser takes only relative paths"
    );
    let mut parts: Vec<&str> = base.split('/').collect();
    parts.pop(); // The importing file's own name.
    for part in specifier.split('/') {
        match part {
            "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

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

/// The header that keeps the page in a browsing context of its own.
const CROSS_ORIGIN_OPENER_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-opener-policy");

/// `GET /` is the chat page, as HTML, under the strict Content-Security-Policy, with no
/// `Referer` ever sent from it (`Referrer-Policy: no-referrer`), in a browsing context of its
/// own (`Cross-Origin-Opener-Policy: same-origin`: no window of another site gets a handle on
/// the one that holds an encrypted room's key). Served over plain HTTP, it asks nothing about
/// TLS: `Strict-Transport-Security` means something only over TLS (tests/tls.rs).
#[tokio::test]
async fn the_root_serves_the_page_with_its_security_policy() {
    let server = TestServer::start().await;
    let (status, headers, body) = get(&server, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&headers, CONTENT_SECURITY_POLICY), EXPECTED_CSP);
    assert_eq!(header(&headers, X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(header(&headers, REFERRER_POLICY), "no-referrer");
    assert_eq!(header(&headers, CROSS_ORIGIN_OPENER_POLICY), "same-origin");
    assert!(headers.get(STRICT_TRANSPORT_SECURITY).is_none());
    assert_eq!(body, INDEX_HTML);
}

/// An invite link (`/?room=CODE`) opens the same page; the script reads the code from the URL
/// (and an end-to-end encrypted room's key from its fragment, which never reaches the server),
/// and the page sends no `Referer` that could carry the code elsewhere.
#[tokio::test]
async fn an_invite_link_serves_the_page() {
    let server = TestServer::start().await;
    let (status, headers, body) = get(&server, "/?room=K7M2QX").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, REFERRER_POLICY), "no-referrer");
    assert_eq!(body, INDEX_HTML);
}

/// Every module of the script and the stylesheet are served with their own types (a script
/// under `nosniff` runs only when it is declared as one), under the page's headers, exactly as
/// they are in `static/`.
#[tokio::test]
async fn the_modules_and_stylesheet_are_served_with_their_types_and_headers() {
    let server = TestServer::start().await;
    let mut files: Vec<(String, &str, String)> = module_files()
        .into_iter()
        .map(|(path, text)| (path, JAVASCRIPT, text))
        .collect();
    files.push((
        "/style.css".to_owned(),
        "text/css; charset=utf-8",
        STYLE_CSS.to_owned(),
    ));
    for (path, content_type, expected) in files {
        let (status, headers, body) = get(&server, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, CONTENT_TYPE), content_type, "{path}");
        assert_eq!(
            header(&headers, CONTENT_SECURITY_POLICY),
            EXPECTED_CSP,
            "{path}"
        );
        assert_eq!(
            header(&headers, X_CONTENT_TYPE_OPTIONS),
            "nosniff",
            "{path}"
        );
        assert_eq!(header(&headers, CACHE_CONTROL), "no-cache", "{path}");
        assert_eq!(header(&headers, REFERRER_POLICY), "no-referrer", "{path}");
        assert_eq!(
            header(&headers, CROSS_ORIGIN_OPENER_POLICY),
            "same-origin",
            "{path}"
        );
        assert_eq!(body, expected, "{path}");
    }
    assert!(
        INDEX_HTML.contains(r#"<link rel="stylesheet" href="/style.css">"#),
        "the page links its stylesheet"
    );
}

/// The page loads its script as one ES module, which imports the others; the browser runs it
/// only if that module and every one it imports, transitively, come back as JavaScript. So:
/// index.html's only script is the entry module, with `type="module"`; following the imports
/// from it reaches every module in `static/js/`, and each is served with 200 and its type.
#[tokio::test]
async fn the_page_loads_its_entry_module_and_every_import_is_served() {
    let html = INDEX_HTML.to_ascii_lowercase();
    let scripts: Vec<&str> = html
        .match_indices("<script")
        .map(|(index, _)| &html[index..index + html[index..].find('>').unwrap()])
        .collect();
    assert_eq!(
        scripts,
        [format!(r#"<script type="module" src="{ENTRY_MODULE}""#)],
        "the page loads the entry module, as a module, and no other script"
    );

    let server = TestServer::start().await;
    let mut reached = BTreeSet::new();
    let mut to_fetch = vec![ENTRY_MODULE.to_owned()];
    while let Some(path) = to_fetch.pop() {
        if !reached.insert(path.clone()) {
            continue;
        }
        let (status, headers, body) = get(&server, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, CONTENT_TYPE), JAVASCRIPT, "{path}");
        to_fetch.extend(imports(&body).into_iter().map(|s| resolve(&path, s)));
    }
    let on_disk: BTreeSet<String> = module_files().into_iter().map(|(path, _)| path).collect();
    assert_eq!(
        reached, on_disk,
        "the page reaches exactly the modules in static/js/"
    );
    assert!(reached.len() > 1, "the entry module imports the others");
}

/// The import scanner itself: single- and multi-line imports, re-exports, paths resolved.
#[test]
fn imports_are_found_and_resolved() {
    let module = "import * as views from './views.js';\n\
                  import {\n  A,\n  B,\n} from \"./protocol.js\";\n\
                  export { C } from '../shared/c.js';\n\
                  import './side-effect.js';\n\
                  const text = 'words from elsewhere';\n";
    assert_eq!(
        imports(module),
        [
            "./views.js",
            "./protocol.js",
            "../shared/c.js",
            "./side-effect.js"
        ]
    );
    assert_eq!(resolve("/js/main.js", "./views.js"), "/js/views.js");
    assert_eq!(resolve("/js/main.js", "../shared/c.js"), "/shared/c.js");
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
/// into the page as text, so `<img src=x onerror=…>` stays characters on the screen. Every
/// module is checked, the ones added later too.
#[test]
fn the_script_never_parses_strings_as_html_or_code() {
    for (path, text) in module_files() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!text.contains(sink), "{path} uses {sink}");
        }
    }
}

/// The modules keep to their parts: the connection never touches the page, the views never
/// reach for the socket, the encryption does neither, and only the wiring (main.js) imports
/// the connection or the views.
#[test]
fn the_connection_and_the_views_keep_to_their_parts() {
    for (path, text) in module_files() {
        let imported: Vec<String> = imports(&text)
            .into_iter()
            .map(|s| resolve(&path, s))
            .collect();
        for part in ["/js/connection.js", "/js/views.js"] {
            assert!(
                path == ENTRY_MODULE || !imported.iter().any(|i| i == part),
                "{path} imports {part}: only the wiring ({ENTRY_MODULE}) may"
            );
        }
        match path.as_str() {
            "/js/connection.js" => assert!(!text.contains("document."), "{path} touches the page"),
            "/js/views.js" => assert!(!text.contains("WebSocket"), "{path} reaches for the socket"),
            "/js/e2e.js" => {
                assert!(!text.contains("document."), "{path} touches the page");
                assert!(!text.contains("WebSocket"), "{path} reaches for the socket");
            }
            _ => {}
        }
    }
}

/// The invite's QR code is drawn in the page, so that an encrypted room's key, which is in the
/// link, never leaves it: neither the module that draws it nor the vendored encoder makes a
/// request of any kind, and neither module of issue 20 reaches for the socket.
#[test]
fn the_invite_and_the_attention_modules_send_nothing() {
    for (path, text) in module_files() {
        let own = ["/js/invite.js", "/js/attention.js"].contains(&path.as_str());
        if !own && !path.starts_with("/js/vendor/") {
            continue;
        }
        for request in [
            "WebSocket",
            "fetch(",
            "XMLHttpRequest",
            "sendBeacon",
            "new Image",
        ] {
            assert!(!text.contains(request), "{path} uses {request}");
        }
    }
}

/// An end-to-end encrypted room's key is kept for the tab only: the encryption module uses
/// sessionStorage, never localStorage (which outlives the tab and is shared with every other
/// tab of the site), and uses the browser's WebCrypto rather than a library.
#[test]
fn the_key_is_kept_per_tab_with_webcrypto() {
    let modules = module_files();
    let (_, e2e) = modules
        .iter()
        .find(|(path, _)| path == "/js/e2e.js")
        .expect("the encryption module");
    assert!(e2e.contains("sessionStorage"), "the key survives a reload");
    assert!(
        !e2e.contains("localStorage"),
        "the key never outlives the tab"
    );
    assert!(
        e2e.contains("crypto.subtle"),
        "WebCrypto does the cryptography"
    );
    assert!(
        imports(e2e).is_empty(),
        "no library: e2e.js imports nothing"
    );
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

/// The page links its web app manifest, which is served as `application/manifest+json` and is
/// what makes the page installable: a name and short name, `display: standalone`, a start URL
/// on this site, theme and background colours, and PNG icons at 192 and 512 px that are served
/// as PNGs of exactly those sizes. The page also gives the browser its colour in both schemes.
#[tokio::test]
async fn the_manifest_makes_the_page_installable() {
    assert!(INDEX_HTML.contains(r#"<link rel="manifest" href="/manifest.webmanifest">"#));
    for scheme in ["light", "dark"] {
        assert!(
            INDEX_HTML.contains(&format!(r#"media="(prefers-color-scheme: {scheme})">"#)),
            "a theme colour for the {scheme} scheme"
        );
    }
    let server = TestServer::start().await;
    let (status, headers, body) = get(&server, "/manifest.webmanifest").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, CONTENT_TYPE), "application/manifest+json");
    assert_eq!(header(&headers, X_CONTENT_TYPE_OPTIONS), "nosniff");
    let manifest: serde_json::Value = serde_json::from_str(&body).expect("the manifest is JSON");
    assert_eq!(manifest["name"], "Chat");
    assert_eq!(manifest["short_name"], "Chat");
    assert_eq!(manifest["display"], "standalone");
    assert_eq!(manifest["start_url"], "/");
    for colour in ["theme_color", "background_color"] {
        let value = manifest[colour].as_str().unwrap_or_default();
        assert!(value.starts_with('#'), "{colour}: {value:?}");
    }

    let mut sizes = BTreeSet::new();
    for icon in manifest["icons"].as_array().expect("icons") {
        let src = icon["src"].as_str().expect("an icon's src");
        let (width, height) = png_size(&server, src).await;
        assert_eq!(icon["type"], "image/png", "{src}");
        assert_eq!(icon["sizes"], format!("{width}x{height}"), "{src}");
        if icon["purpose"] != "maskable" {
            sizes.insert(width);
        }
    }
    assert!(
        sizes.contains(&192) && sizes.contains(&512),
        "icons at 192 and 512 px: {sizes:?}"
    );
}

/// The size of the PNG at `path`, which must be served as one.
async fn png_size(server: &TestServer, path: &str) -> (u32, u32) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: Uri = format!("http://{}{path}", server.addr).parse().unwrap();
    let response = client.get(uri).await.expect("the server answers");
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    assert_eq!(
        header(response.headers(), CONTENT_TYPE),
        "image/png",
        "{path}"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let image = image::load_from_memory_with_format(&body, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{path} is not a PNG: {e}"));
    (image.width(), image.height())
}

/// The icon with the unread dot, which the page shows while messages wait unread in a
/// background tab, is served like the page's own icon.
#[tokio::test]
async fn the_unread_icon_is_served() {
    let server = TestServer::start().await;
    let (status, headers, body) = get(&server, "/favicon-unread.svg").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, CONTENT_TYPE), "image/svg+xml");
    assert!(body.starts_with("<svg"));
}
