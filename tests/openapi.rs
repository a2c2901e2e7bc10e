//! The API document: OpenAPI 3.1 generated from the handlers, kept as a
//! golden file (a route or a type that changes without it fails here;
//! refresh with PADDOCK_UPDATE_GOLDEN=1), served by the daemon as is, and
//! naming only routes the daemon serves.

mod common;

use common::*;
use std::path::Path;

fn golden_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/openapi.json")
}

fn generated() -> String {
    serde_json::to_string_pretty(paddock::api::openapi()).expect("serialise") + "\n"
}

#[test]
fn the_document_matches_its_golden_file() {
    let now = generated();
    if std::env::var_os("PADDOCK_UPDATE_GOLDEN").is_some() {
        std::fs::write(golden_path(), &now).expect("write golden");
    }
    let kept = std::fs::read_to_string(golden_path()).expect("tests/golden/openapi.json; run with PADDOCK_UPDATE_GOLDEN=1 to create it");
    assert!(kept == now, "the API changed without its document: review the difference and refresh tests/golden/openapi.json with PADDOCK_UPDATE_GOLDEN=1");
    let doc: serde_json::Value = serde_json::from_str(&now).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/v1/vms", "/v1/vms/{name}/wait", "/v1/host", "/metrics", "/v1/stats", "/v1/openapi.json"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    assert!(doc["components"]["schemas"].get("VmSpec").is_some());
    // Every reference resolves (a type only a query names is easy to miss).
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20);
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "{r} does not resolve");
    }
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_daemon_serves_the_document_and_every_documented_route() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    block_on(async {
        let served = raw_get(&d, "/v1/openapi.json").await;
        assert_eq!(served.0, 200);
        let served: serde_json::Value = serde_json::from_slice(&served.1).expect("json");
        let ours: serde_json::Value = serde_json::from_str(&generated()).expect("json");
        assert_eq!(served, ours);

        // Every documented (path, method) reaches a handler: an unknown VM
        // is "no VM named", never the router's bare 404 or a 405.
        for (path, item) in ours["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys().filter(|m| ["get", "post", "delete"].contains(&m.as_str())) {
                if path == "/v1/shutdown" {
                    continue;
                }
                let target = path.replace("{name}", "nope").replace("{port}", "5").replace("{sha256}", &"0".repeat(64));
                let (status, body) = request(&d, &method.to_ascii_uppercase(), &target).await;
                let text = String::from_utf8_lossy(&body);
                assert_ne!(status, 405, "{method} {path}: not routed");
                assert!(!(status == 404 && !text.contains("nope") && !text.contains("image") && !text.contains("volume")), "{method} {path}: {status} {text}");
            }
        }
    });
}

async fn raw_get(d: &Daemon, path: &str) -> (u16, Vec<u8>) {
    request(d, "GET", path).await
}

async fn request(d: &Daemon, method: &str, path: &str) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::UnixStream::connect(d.client.socket()).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "paddock")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .expect("request");
    let resp = tx.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    // Streams (console follow, events follow) are not asked to follow here.
    let body = resp.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    (status, body)
}
