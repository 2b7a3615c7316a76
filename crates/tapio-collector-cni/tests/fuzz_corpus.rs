//! Regression corpora of the fuzz targets (`fuzz/`): every file under
//! `fuzz/corpus/<target>` goes through the same checks as the target, plus
//! random bytes and single-byte mutations of every seed. Runs in plain
//! `cargo test`, no nightly, no privileges.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tapio_collector_cni::cni::{CniEnv, PluginOutput, parse_output};
use tapio_collector_cni::fuzzing::decode_record;
use tapio_core::testing::mutations;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    tapio_core::testing::corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target),
    )
}

fn env(data: &[u8]) {
    for tail in [false, true] {
        if let Ok(Some(env)) = CniEnv::parse(data, tail) {
            assert!(!env.command.is_empty());
        }
    }
}

#[test]
fn plugin_env_corpus_parses_or_errors_without_panicking() {
    let files = corpus("plugin_env");
    for (name, data) in &files {
        env(data);
        if name == "add" {
            let parsed = CniEnv::parse(data, false).unwrap().unwrap();
            assert_eq!(parsed.command, "ADD");
            assert_eq!(parsed.container_id, "abc");
            assert_eq!(parsed.pod_name.as_deref(), Some("web"));
        }
        if name == "tail-del" {
            let parsed = CniEnv::parse(data, true).unwrap().unwrap();
            assert_eq!((parsed.command.as_str(), parsed.truncated), ("DEL", true));
        }
    }
    mutations(&files, env);
}

#[test]
fn plugin_output_corpus_parses_or_errors_without_panicking() {
    let files = corpus("plugin_output");
    for (name, data) in &files {
        let got = parse_output(data);
        match name.as_str() {
            "error" => match got.unwrap() {
                PluginOutput::Error(e) => {
                    assert_eq!((e.code, e.msg.as_str()), (7, "invalid config"))
                }
                other => panic!("{other:?}"),
            },
            "result" => assert!(matches!(got.unwrap(), PluginOutput::Result(_))),
            "garbage" | "truncated" => assert!(got.is_err(), "{name}"),
            _ => {}
        }
    }
    mutations(&files, |d| {
        let _ = parse_output(d);
    });
}

#[test]
fn record_corpus_is_rejected_without_panicking() {
    let files = corpus("decode_record");
    for (name, data) in &files {
        assert!(
            decode_record(data).is_none(),
            "{name} is not a valid record"
        );
    }
    mutations(&files, |d| {
        let _ = decode_record(d);
    });
}
