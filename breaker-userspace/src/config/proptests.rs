//! The parser over mutated valid configs: whatever the text, it never panics, and
//! every refusal names a field or a line.
use std::path::Path;

use proptest::prelude::*;

use super::{Config, ConfigError};

const VALID: &[&str] = &[
    r#"cgroup = "/sys/fs/cgroup"
[daemon]
metrics_listen = "127.0.0.1:9464"
probe_mark = 0x62726b
[defaults]
failure_threshold = 5
open_duration = "30s"
probe_interval = "2s"
[[upstream]]
name = "payments"
endpoints = ["10.0.0.12:8443", "10.0.1.0/24:8443", "[fd00::12]:8443", "10.0.2.0/24:*"]
fallback = "10.9.0.1:9090"
failure_threshold = 3
probe = { address = "10.0.0.12:8443", http_path = "/healthz" }
[default_policy]
failure_threshold = 10
max_destinations = 65536
"#,
    r#"[[upstream]]
name = "a"
endpoints = ["10.77.0.2:81"]
half_open_max_connections = 2
trial_connect_timeout = "500ms"
[[upstream]]
name = "b"
endpoints = ["[fd77::/64]:82", "10.77.0.3"]
fallback = ["10.77.0.9:9000", "[fd78::9]:9000"]
probe = { address = "10.77.0.3:80" }
probe_timeout = "1s"
"#,
    r#"[default_policy]
enabled = true
half_open_max_connections = 1
open_duration = "1m"
probe_interval = "1s"
"#,
];

/// Values an operator (or an attacker with the file) might write.
const HOSTILE: &[&str] = &[
    "0",
    "-1",
    "1e99",
    "\"\"",
    "\"0.0.0.0/0\"",
    "\"::/0\"",
    "[]",
    "{}",
    "\"::1:80\"",
    "\"127.0.0.1:80\"",
    "[\"::ffff:127.0.0.1\"]",
    "18446744073709551616",
    "4294967295",
    "99999999999999999999999",
    "\"1000000h\"",
    "\"0s\"",
    "\"-5s\"",
    "true",
    "\"x\"",
    "[\"10.0.0.1:0\"]",
    "[\"[::ffff:0.0.0.0/96]:80\"]",
    "\"127.0.0.1:0\"",
    "{ address = 1 }",
    "\"/\"",
    "\"../../..\"",
    "nan",
    "inf",
    "'''",
    "\"\\u0000\"",
];

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    /// Line index, hostile value: the part after `=` replaced.
    Replace(usize, usize),
    /// Line index, hostile value: a line `<that line's key> = value` inserted after it.
    Insert(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(l, v)| Mutation::Replace(l, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(l, v)| Mutation::Insert(l, v)),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match *m {
            Mutation::Delete(l) => {
                lines.remove(l % n);
            }
            Mutation::Duplicate(l) => {
                let line = lines[l % n].clone();
                lines.insert(l % n, line);
            }
            Mutation::Replace(l, v) => {
                let line = &mut lines[l % n];
                let value = HOSTILE[v % HOSTILE.len()];
                *line = match line.split_once('=') {
                    Some((key, _)) => format!("{key}= {value}"),
                    None => value.to_string(),
                };
            }
            Mutation::Insert(l, v) => {
                let key = lines[l % n]
                    .split_once('=')
                    .map_or("endpoints", |(k, _)| k.trim())
                    .to_string();
                let value = HOSTILE[v % HOSTILE.len()];
                lines.insert(l % n + 1, format!("{key} = {value}"));
            }
        }
    }
    lines.join("\n")
}

/// Whether `at` says "line N" for some number N.
fn has_line(at: &str) -> bool {
    at.split("line ")
        .skip(1)
        .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic_and_refusals_name_where(
        base in 0..VALID.len(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let text = apply(VALID[base], &mutations);
        match Config::parse(Path::new("fuzz.toml"), &text) {
            Ok(config) => {
                // What check-config does with an accepted config must not panic either.
                let _ = config.describe();
                let _ = config.warnings();
                let _ = config.kernel_memory_estimate(2);
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("config fuzz.toml"), "{}", shown);
                prop_assert!(!shown.contains('\n'), "one line: {}", shown);
                match &e {
                    ConfigError::Invalid { field, .. } => {
                        prop_assert!(!field.is_empty(), "{}", shown);
                    }
                    ConfigError::Parse { at, .. } => {
                        prop_assert!(has_line(at), "no line for:\n{}\n{}", text, shown);
                    }
                    _ => prop_assert!(false, "unexpected {:?}", e),
                }
            }
        }
    }
}

#[test]
fn the_seeds_are_valid() {
    for text in VALID {
        Config::parse(Path::new("seed.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    }
}
