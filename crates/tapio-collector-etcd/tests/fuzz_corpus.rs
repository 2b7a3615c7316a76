//! Regression corpora of the fuzz targets (`fuzz/`): every file under
//! `fuzz/corpus/<target>` goes through the same checks as the target, plus
//! random bytes and single-byte mutations of every seed. Runs in plain
//! `cargo test`, no nightly, no privileges.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tapio_collector_etcd::fuzzing::{capture_value, decode_io_record};
use tapio_collector_etcd::k8s::{ValueEncoding, decode_key, decode_value, semconv_stem};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    tapio_core::testing::corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target),
    )
}

fn value(data: &[u8]) -> Option<ValueEncoding> {
    let decoded = decode_value(data).ok();
    if let Some(object) = decoded.as_ref().and_then(|d| d.object.as_ref()) {
        serde_json::to_vec(object).expect("object serialises");
    }
    for limit in [0, 7, 64, data.len()] {
        let captured = capture_value(data, limit);
        assert_eq!(captured.truncated, data.len() > limit);
    }
    decoded.map(|d| d.encoding)
}

fn key(data: &[u8]) -> bool {
    let key = String::from_utf8_lossy(data);
    let mut any = false;
    for prefix in ["/registry/", "/", ""] {
        if let Some(k) = decode_key(&key, prefix) {
            let _ = (k.qualified_resource(), k.is_secret(), semconv_stem(&k));
            any = true;
        }
    }
    any
}

#[test]
fn value_corpus_decodes_or_errors_without_panicking() {
    let files = corpus("decode_value");
    assert!(files.len() >= 10);
    for (name, data) in &files {
        let got = std::panic::catch_unwind(|| value(data))
            .unwrap_or_else(|_| panic!("decoder panicked on {name}"));
        if name.starts_with("json-") && !name.ends_with("bad") && !name.ends_with("not-object") {
            assert_eq!(got, Some(ValueEncoding::Json), "{name}");
        }
        if name == "protobuf-configmap" {
            assert_eq!(got, Some(ValueEncoding::Protobuf), "{name}");
            let obj = decode_value(data).unwrap().object.unwrap();
            assert_eq!(
                (obj.kind.as_str(), obj.name.as_deref()),
                ("ConfigMap", Some("cfg"))
            );
        }
    }
    tapio_core::testing::mutations(&files, |d| {
        value(d);
    });
}

#[test]
fn key_corpus_decodes_or_is_rejected_without_panicking() {
    let files = corpus("decode_key");
    assert!(files.len() >= 10);
    let decoded = files.iter().filter(|(_, d)| key(d)).count();
    assert!(decoded >= 8, "only {decoded} keys decoded");
    tapio_core::testing::mutations(&files, |d| {
        key(d);
    });
}

#[test]
fn io_record_corpus_decodes_or_is_rejected_without_panicking() {
    let files = corpus("decode_io_record");
    for (name, data) in &files {
        let got = decode_io_record(data);
        match name.as_str() {
            "bad-kind" | "bad-version" | "truncated" | "op-0" | "op-9" => {
                assert!(got.is_none(), "{name}")
            }
            n if n.starts_with("op-") => assert!(got.is_some(), "{name}"),
            _ => {}
        }
    }
    tapio_core::testing::mutations(&files, |d| {
        let _ = decode_io_record(d);
    });
}
