//! `per_endpoint = true`: a service's endpoints as breakers of their own.
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

fn invalid_field(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Invalid { field, reason, .. }) => (field, reason),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

fn labels(up: &Upstream) -> Vec<&str> {
    up.fallbacks.iter().map(|f| f.label.as_str()).collect()
}

const SERVICE: &str = r#"
[[upstream]]
name = "payments"
endpoints = ["10.0.1.1:443", "10.0.1.2:443", "[fd00::3]:443"]
per_endpoint = true
failure_threshold = 3
probe = { http_path = "/health" }
fallbacks = ["10.0.9.1:443"]
"#;

#[test]
fn each_endpoint_of_a_service_gets_its_own_breaker_with_the_service_policy() {
    let c = parse(SERVICE).unwrap();
    let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "payments/10.0.1.1:443",
            "payments/10.0.1.2:443",
            "payments/[fd00::3]:443"
        ]
    );
    for up in &c.upstreams {
        assert_eq!(up.endpoints.len(), 1);
        assert_eq!(up.policy.failure_threshold, 3);
        // Each probed at its own address, with the service's HTTP path.
        assert_eq!(
            Some(up.probe.address),
            up.endpoints[0].single_address(),
            "{}",
            up.name
        );
        assert_eq!(up.probe.http_path.as_deref(), Some("/health"));
        let service = up.service.as_ref().unwrap();
        assert_eq!(service.name, "payments");
        assert_eq!(service.members, names);
    }
    // The service's own fallbacks: its endpoints are steered to in the
    // kernel, from the service's row, before them.
    for up in &c.upstreams {
        assert_eq!(labels(up), ["10.0.9.1:443"], "{}", up.name);
        assert!(up.service.as_ref().unwrap().steers(), "{}", up.name);
    }
}

#[test]
fn the_ejection_cap_takes_the_tighter_bound_and_always_lets_one_out() {
    let cap = |n: usize, max: u32, min: u32| {
        Service {
            name: "s".into(),
            members: (0..n).map(|i| i.to_string()).collect(),
            max_ejected_percent: max,
            min_healthy_percent: min,
        }
        .eject_cap()
    };
    // Defaults (100 %, 0 %): every endpoint may go.
    assert_eq!(cap(1, 100, 0), 1);
    assert_eq!(cap(2, 100, 0), 2);
    assert_eq!(cap(3, 100, 0), 3);
    assert_eq!(cap(10, 100, 0), 10);
    // Envoy's 10 %: at least one, as in Envoy.
    assert_eq!(cap(1, 10, 0), 1);
    assert_eq!(cap(3, 10, 0), 1);
    assert_eq!(cap(10, 10, 0), 1);
    // 50 % of 3 rounds down to 1; of 2 is 1; of 10 is 5.
    assert_eq!(cap(3, 50, 0), 1);
    assert_eq!(cap(2, 50, 0), 1);
    assert_eq!(cap(10, 50, 0), 5);
    // min_healthy_percent rounds up the endpoints kept: 50 % of 3 keeps 2.
    assert_eq!(cap(3, 100, 50), 1);
    assert_eq!(cap(10, 100, 75), 2);
    assert_eq!(cap(10, 30, 50), 3);
    // A one-endpoint service trips as any upstream, whatever the settings.
    assert_eq!(cap(1, 1, 99), 1);
    assert_eq!(cap(2, 100, 99), 1);
}

#[test]
fn another_upstream_naming_a_service_gets_its_endpoints_then_its_fallbacks() {
    let c = parse(&format!(
        r#"{SERVICE}
[[upstream]]
name = "checkout"
endpoints = ["10.0.2.1:80"]
fallbacks = ["payments"]
"#
    ))
    .unwrap();
    let checkout = c.upstreams.iter().find(|u| u.name == "checkout").unwrap();
    assert_eq!(
        labels(checkout),
        [
            "payments/10.0.1.1:443",
            "payments/10.0.1.2:443",
            "payments/[fd00::3]:443",
            "10.0.9.1:443"
        ]
    );
    assert!(checkout.service.is_none());
}

/// A service of `n` endpoints (10.0.0.1:80 on), with `fallbacks` as written.
fn service_of(n: usize, fallbacks: &str) -> String {
    let endpoints: Vec<String> = (1..=n)
        .map(|i| format!("\"10.0.{}.{}:80\"", i / 200, i % 200))
        .collect();
    format!(
        "[[upstream]]\nname = \"big\"\nper_endpoint = true\nendpoints = [{}]\nfallbacks = [{fallbacks}]\n",
        endpoints.join(", ")
    )
}

#[test]
fn a_service_steers_among_up_to_64_endpoints_and_keeps_three_fallbacks() {
    let text = service_of(64, "\"other\", \"10.9.0.1:80\", \"[fd00::9]:80\"")
        + "[[upstream]]\nname = \"other\"\nendpoints = [\"10.8.0.1:80\"]\n";
    let c = parse(&text).unwrap();
    let members: Vec<&Upstream> = c.upstreams.iter().filter(|u| u.service.is_some()).collect();
    assert_eq!(members.len(), 64);
    for up in &members {
        assert!(up.service.as_ref().unwrap().steers(), "{}", up.name);
        assert_eq!(
            labels(up),
            ["other", "10.9.0.1:80", "[fd00::9]:80"],
            "{}",
            up.name
        );
    }
    assert_eq!(c.steering_services().len(), 1);
    assert_eq!(c.map_sizes().services, 1);
    // A service of one endpoint steers nowhere: no row.
    let one = parse(&service_of(1, "")).unwrap();
    assert!(one.steering_services().is_empty());
    assert_eq!(one.map_sizes().services, 1, "a map needs an entry");

    let (field, reason) = invalid_field(&service_of(65, ""));
    assert_eq!(field, "upstream[0] (\"big\").endpoints");
    assert!(
        reason.contains("65 endpoints") && reason.contains("at most 64"),
        "{reason}"
    );
    // A fourth fallback: the slot that counts steered connects is taken.
    let text = service_of(3, "\"a\", \"b\", \"c\", \"10.9.0.1:80\"")
        + "[[upstream]]\nname = \"a\"\nendpoints = [\"10.8.0.1:80\"]\n[[upstream]]\nname = \"b\"\nendpoints = [\"10.8.0.2:80\"]\n[[upstream]]\nname = \"c\"\nendpoints = [\"10.8.0.3:80\"]\n";
    let (field, reason) = invalid_field(&text);
    assert_eq!(field, "upstream[0] (\"big\").fallbacks");
    assert!(
        reason.contains("(4 hops): at most 3 for a per_endpoint service's"),
        "{reason}"
    );
}

#[test]
fn bad_service_keys_name_what_is_wrong() {
    let cases = [
        // Over a CIDR or any-port endpoint: a breaker per address, with no
        // cap, window or probe.
        (
            r#"endpoints = ["10.0.0.0/24:80"]
per_endpoint = true
max_ejected_percent = 50"#,
            "upstream[0] (\"s\").max_ejected_percent",
            "not known in advance: no ejection cap",
        ),
        (
            r#"endpoints = ["10.0.0.1:*", "10.0.0.2:80"]
per_endpoint = true
min_healthy_percent = 50"#,
            "upstream[0] (\"s\").min_healthy_percent",
            "no ejection cap",
        ),
        (
            r#"endpoints = ["10.0.0.0/24:80"]
per_endpoint = true
failure_rate_threshold = 50"#,
            "upstream[0] (\"s\").failure_rate_threshold",
            "each keeps no window",
        ),
        (
            r#"endpoints = ["10.0.0.0/24:80"]
per_endpoint = true
probe = { address = "10.0.0.1:80" }"#,
            "upstream[0] (\"s\").probe",
            "each recovers by trial connects",
        ),
        (
            r#"endpoints = ["10.0.0.0/24:80"]
per_endpoint = true
half_open_max_connections = 0"#,
            "upstream[0] (\"s\").half_open_max_connections",
            "only way to recover",
        ),
        (
            r#"endpoints = ["10.0.0.1:80"]
max_ejected_percent = 50"#,
            "upstream[0] (\"s\").max_ejected_percent",
            "without per_endpoint = true",
        ),
        (
            r#"endpoints = ["10.0.0.1:80"]
min_healthy_percent = 50"#,
            "upstream[0] (\"s\").min_healthy_percent",
            "without per_endpoint = true",
        ),
        (
            r#"endpoints = ["10.0.0.1:80"]
per_endpoint = true
max_ejected_percent = 0"#,
            "upstream[0] (\"s\").max_ejected_percent",
            "must be 1 to 100",
        ),
        (
            r#"endpoints = ["10.0.0.1:80"]
per_endpoint = true
min_healthy_percent = 100"#,
            "upstream[0] (\"s\").min_healthy_percent",
            "must be 0 to 99",
        ),
        (
            r#"endpoints = ["10.0.0.1:80", "10.0.0.2:80"]
per_endpoint = true
probe = { address = "10.0.0.1:80" }"#,
            "upstream[0] (\"s\").probe.address",
            "its own address",
        ),
        (
            r#"endpoints = ["10.0.0.1:80", "10.0.0.2:80"]
per_endpoint = true
fallbacks = ["s"]"#,
            "upstream[0] (\"s\").fallbacks[0]",
            "its own fallback",
        ),
    ];
    for (keys, want_field, want) in cases {
        let (field, reason) = invalid_field(&format!("[[upstream]]\nname = \"s\"\n{keys}\n"));
        assert_eq!(field, want_field, "{keys}");
        assert!(reason.contains(want), "{keys}: {reason}");
    }
}

#[test]
fn a_loop_through_services_is_refused_by_their_names() {
    let (field, reason) = invalid_field(
        r#"
[[upstream]]
name = "a"
endpoints = ["10.0.0.1:80", "10.0.0.2:80"]
per_endpoint = true
fallbacks = ["b"]

[[upstream]]
name = "b"
endpoints = ["10.0.1.1:80", "10.0.1.2:80"]
per_endpoint = true
fallbacks = ["a"]
"#,
    );
    assert_eq!(field, "upstream[1] (\"b\").fallbacks[0]");
    assert!(
        reason.contains("(b -> a -> b)") || reason.contains("(a -> b -> a)"),
        "{reason}"
    );
}

#[test]
fn an_alert_may_name_a_service_for_each_of_its_endpoints() {
    let c = parse(&format!(
        r#"{SERVICE}
[[alert]]
url = "http://127.0.0.1:9/hook"
upstreams = ["payments"]
"#
    ))
    .unwrap();
    assert_eq!(c.alerts[0].upstreams.len(), 3);
    assert!(c.alerts[0]
        .upstreams
        .iter()
        .all(|n| n.starts_with("payments/")));
}

#[test]
fn check_config_says_what_a_service_endpoint_does() {
    let c = parse(&format!("{SERVICE}max_ejected_percent = 50\n")).unwrap();
    let text = c.describe();
    assert!(text.contains("upstream payments/10.0.1.2:443:"), "{text}");
    assert!(
        text.contains(
            "one of 3 endpoints of payments (per_endpoint); while open, its connects go to \
             another endpoint of the service that is CLOSED"
        ),
        "{text}"
    );
    assert!(
        text.contains("at most 1 of the 3 out of CLOSED at once (max_ejected_percent 50, min_healthy_percent 0)"),
        "{text}"
    );
}

#[test]
fn errors_found_after_the_expansion_name_the_upstream_as_written() {
    let (field, reason) = invalid_field(&format!(
        r#"{SERVICE}
[[upstream]]
name = "b"
endpoints = ["10.0.2.1:80"]
fallbacks = ["127.0.0.1:80"]
packet_action = "redirect"
"#
    ));
    // The second [[upstream]], though it is the fourth breaker.
    assert_eq!(field, "upstream[1] (\"b\").packet_action", "{reason}");
}

/// `per_endpoint = true` over CIDR and any-port endpoints: one upstream whose
/// every matched address keeps a breaker of its own, in the kernel's
/// per-destination maps (sized even without a default policy).
#[test]
fn per_endpoint_over_a_cidr_keeps_a_breaker_per_address() {
    let config = parse(
        r#"
[defaults]
failure_rate_threshold = 50

[[upstream]]
name = "fleet"
endpoints = ["10.0.5.0/24:5432", "10.0.6.1", "10.0.7.1:80"]
per_endpoint = true
failure_threshold = 3
"#,
    )
    .unwrap();
    assert_eq!(
        config.upstreams.len(),
        1,
        "one upstream, not one per endpoint"
    );
    let up = &config.upstreams[0];
    assert!(up.per_address && up.service.is_none());
    // [defaults]' rate is not an address's: it keeps no window.
    assert!(up.policy.rate.is_none(), "{:?}", up.policy.rate);
    assert_eq!(up.policy.failure_threshold, 3);
    assert_eq!(
        config.map_sizes().destinations,
        defaults::DEFAULT_POLICY_MAX_DESTINATIONS
    );
    let text = config.describe();
    assert!(
        text.contains("per address: each address and port it matches"),
        "{text}"
    );
    assert!(
        text.contains("probe:     none: each address recovers by trial connects"),
        "{text}"
    );
    // Listing each address keeps today's per-endpoint service.
    let listed = parse(
        "[[upstream]]\nname = \"s\"\nendpoints = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\nper_endpoint = true\n",
    )
    .unwrap();
    assert!(listed
        .upstreams
        .iter()
        .all(|u| !u.per_address && u.service.is_some()));
    // Without per_endpoint, a CIDR is one breaker.
    let one = parse("[[upstream]]\nname = \"s\"\nendpoints = [\"10.0.0.0/24:80\"]\nprobe = { address = \"10.0.0.1:80\" }\n").unwrap();
    assert!(!one.upstreams[0].per_address);
}

#[test]
fn a_per_address_upstream_is_no_fallback() {
    let (field, reason) = invalid_field(
        r#"
[[upstream]]
name = "fleet"
endpoints = ["10.0.5.0/24:5432", "10.0.6.1:5432"]
per_endpoint = true

[[upstream]]
name = "api"
endpoints = ["10.0.0.1:80"]
fallbacks = ["fleet"]
"#,
    );
    assert_eq!(field, "upstream[1] (\"api\").fallbacks[0]");
    assert!(reason.contains("keeps a breaker per address"), "{reason}");
}
