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

const MINIMAL: &str = r#"
[[upstream]]
name = "api"
endpoints = ["10.1.2.3:8080"]
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.cgroup, None);
    assert_eq!(c.daemon.metrics_listen, "127.0.0.1:9464".parse().unwrap());
    let up = &c.upstreams[0];
    assert_eq!(up.policy.failure_threshold, 5);
    assert_eq!(up.policy.success_threshold, 1);
    assert_eq!(
        up.policy.half_open_max_connections, 0,
        "a configured upstream recovers through its probe"
    );
    assert_eq!(up.policy.trial_connect_timeout, Duration::from_secs(1));
    assert_eq!(up.policy.open_duration, Duration::from_secs(30));
    assert_eq!(
        up.probe,
        Probe {
            address: "10.1.2.3:8080".parse().unwrap(),
            http_path: None
        }
    );
    assert!(c.default_policy.is_none());
}

#[test]
fn upstream_overrides_defaults_table() {
    let c = parse(
        r#"
cgroup = "/sys/fs/cgroup/apps"
[defaults]
failure_threshold = 3
open_duration = "10s"
[[upstream]]
name = "db"
endpoints = ["[fd00::1]:5432", "10.0.0.0/24:*"]
open_duration = "500ms"
fallback = ["127.0.0.1:9000", "[::1]:9000"]
probe = { address = "10.0.0.9:80", http_path = "/healthz" }
[default_policy]
failure_threshold = 2
"#,
    )
    .unwrap();
    let up = &c.upstreams[0];
    assert_eq!(up.policy.failure_threshold, 3);
    assert_eq!(up.policy.open_duration, Duration::from_millis(500));
    assert_eq!(up.fallbacks.len(), 2);
    assert_eq!(up.probe.http_path.as_deref(), Some("/healthz"));
    let d = c.default_policy.unwrap();
    assert_eq!(d.policy.failure_threshold, 2);
    assert_eq!(d.policy.open_duration, Duration::from_secs(10));
}

#[test]
fn endpoint_syntax() {
    let e: Endpoint = "10.0.0.7/24:80".parse().unwrap();
    assert_eq!(e.to_string(), "10.0.0.0/24:80");
    assert_eq!("10.0.0.7".parse::<Endpoint>().unwrap().port, None);
    assert_eq!(
        "[fd00::/64]:*".parse::<Endpoint>().unwrap().to_string(),
        "[fd00::/64]:*"
    );
    assert_eq!(
        "[fd00::1]".parse::<Endpoint>().unwrap().single_address(),
        None
    );
    assert_eq!("fd00::/64".parse::<Endpoint>().unwrap().port, None);
    assert_eq!(
        "10.0.0.1:0".parse::<Endpoint>(),
        Err(EndpointParseError::Port("0".into()))
    );
    assert!("nonsense:80".parse::<Endpoint>().is_err());
    assert!("[fd00::1]80".parse::<Endpoint>().is_err());
}

#[test]
fn bad_configs_name_the_field_and_why() {
    let cases: &[(&str, &str, &str)] = &[
        ("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nfailure_threshold=0", "upstream[0] (\"a\").failure_threshold", "between 1"),
        ("[[upstream]]\nname='a'\nendpoints=[]", "upstream[0] (\"a\").endpoints", "at least one"),
        ("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:99999']", "upstream[0] (\"a\").endpoints[0]", "port"),
        ("[[upstream]]\nname='a'\nendpoints=['10.0.0.0/8:*']", "upstream[0] (\"a\").probe", "probe.address"),
        (
            "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n[[upstream]]\nname='a'\nendpoints=['10.0.0.2:80']",
            "upstream[1] (\"a\").name",
            "same name",
        ),
        (
            "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n[[upstream]]\nname='b'\nendpoints=['10.0.0.1:80']",
            "upstream[1] (\"b\").endpoints[0]",
            "already an endpoint",
        ),
        ("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nfallback='10.0.0.1:80'", "upstream[0] (\"a\").fallback[0]", "own endpoints"),
        ("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nopen_duration='0s'", "upstream[0] (\"a\").open_duration", "between"),
        ("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nhalf_open_max_connections=1000", "upstream[0] (\"a\").half_open_max_connections", "255"),
        ("[daemon]\nmetrics_listen='localhost'\n[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']", "daemon.metrics_listen", "address:port"),
        ("[daemon]\nprobe_mark=0\n[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']", "daemon.probe_mark", "0"),
        ("[[upstream]]\nname='default'\nendpoints=['10.0.0.1:80']", "upstream[0] (\"default\").name", "reserved"),
    ];
    for (text, field, why) in cases {
        let (got_field, reason) = invalid_field(text);
        assert_eq!(&got_field, field, "for config:\n{text}");
        assert!(
            reason.contains(why),
            "reason {reason:?} should mention {why:?}"
        );
    }
}

#[test]
fn unknown_fields_and_bad_types_are_parse_errors() {
    for text in [
        "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nfailure_treshold=3",
        "[defaults]\nopen_duration='soon'",
    ] {
        match parse(text) {
            Err(ConfigError::Parse { message, .. }) => assert!(!message.is_empty()),
            other => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }
}

#[test]
fn describe_mentions_every_upstream() {
    let c = parse(MINIMAL).unwrap();
    let text = c.describe();
    assert!(text.contains("upstream api"));
    assert!(text.contains("10.1.2.3:8080"));
    assert!(text.contains("default policy: off"));
}

#[test]
fn v4_mapped_endpoints_become_ipv4() {
    for (text, want) in [
        ("[::ffff:10.0.0.0/120]:80", "10.0.0.0/24:80"),
        ("[::ffff:10.0.0.7]:80", "10.0.0.7:80"),
        ("[::ffff:10.0.0.7/128]:*", "10.0.0.7:*"),
        ("::ffff:10.0.0.9/120", "10.0.0.0/24:*"),
        ("[::ffff:0.0.0.0/96]:443", "0.0.0.0/0:443"),
    ] {
        let ep: Endpoint = text.parse().unwrap();
        assert_eq!(ep.to_string(), want, "{text}");
        assert_eq!(ep, want.parse().unwrap(), "{text}");
        assert!(matches!(ep.net, ipnet::IpNet::V4(_)), "{text}");
    }
    // Not v4-mapped: stays IPv6.
    let ep: Endpoint = "[::a00:7]:80".parse().unwrap();
    assert_eq!(ep.to_string(), "[::a00:7]:80");
}

#[test]
fn v4_mapped_cidr_shorter_than_96_is_rejected() {
    assert!(matches!(
        "[::ffff:10.0.0.0/95]:80".parse::<Endpoint>(),
        Err(EndpointParseError::MappedPrefix(_))
    ));
    let (field, reason) =
        invalid_field("[[upstream]]\nname='a'\nendpoints=['[::ffff:10.0.0.0/88]:80']");
    assert_eq!(field, "upstream[0] (\"a\").endpoints[0]");
    assert!(
        reason.contains("::ffff:10.0.0.0/88") && reason.contains("/96"),
        "{reason}"
    );
}

#[test]
fn v4_mapped_duplicate_in_the_same_upstream_is_rejected() {
    let (field, reason) =
        invalid_field("[[upstream]]\nname='a'\nendpoints=['10.0.0.7:80', '[::ffff:10.0.0.7]:80']");
    assert_eq!(field, "upstream[0] (\"a\").endpoints[1]");
    assert!(
        reason.contains("already an endpoint of upstream \"a\"")
            && reason.contains("\"[::ffff:10.0.0.7]:80\"")
            && reason.contains("\"10.0.0.7:80\""),
        "names both texts: {reason}"
    );
}

#[test]
fn v4_mapped_duplicate_across_upstreams_is_rejected() {
    let (field, reason) = invalid_field(
        "[[upstream]]\nname='a'\nendpoints=['[::ffff:10.0.0.0/120]:80']\nprobe={address='10.0.0.1:80'}\n[[upstream]]\nname='b'\nendpoints=['10.0.0.0/24:80']\nprobe={address='10.0.0.1:80'}",
    );
    assert_eq!(field, "upstream[1] (\"b\").endpoints[0]");
    assert!(
        reason.contains("already an endpoint of upstream \"a\"")
            && reason.contains("\"[::ffff:10.0.0.0/120]:80\"")
            && reason.contains("\"10.0.0.0/24:80\""),
        "names both texts: {reason}"
    );
}

#[test]
fn v4_mapped_fallback_and_probe_become_ipv4() {
    let c = parse(
        "[[upstream]]\nname='a'\nendpoints=['10.0.0.7:80']\nfallback=['[::ffff:127.0.0.1]:9000', '[::1]:9000']\nprobe={address='[::ffff:10.0.0.8]:81'}",
    )
    .unwrap();
    let up = &c.upstreams[0];
    let addresses: Vec<SocketAddr> = up.fallbacks.iter().flat_map(|f| f.addresses()).collect();
    assert_eq!(
        addresses,
        vec![
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap(),
            "[::1]:9000".parse().unwrap()
        ]
    );
    assert_eq!(up.probe.address, "10.0.0.8:81".parse().unwrap());
    // As IPv4, a mapped fallback takes the IPv4 slot.
    let (field, reason) = invalid_field(
        "[[upstream]]\nname='a'\nendpoints=['10.0.0.7:80']\nfallback=['127.0.0.1:9000', '[::ffff:127.0.0.2]:9000']",
    );
    assert_eq!(field, "upstream[0] (\"a\").fallback[1]");
    assert!(
        reason.contains("one fallback per address family"),
        "{reason}"
    );
    // And a mapped fallback that is the upstream's own endpoint is caught.
    let (field, _) = invalid_field(
        "[[upstream]]\nname='a'\nendpoints=['10.0.0.7:80']\nfallback='[::ffff:10.0.0.7]:80'",
    );
    assert_eq!(field, "upstream[0] (\"a\").fallback[0]");
}

const DEFAULT_POLICY_ONLY: &str = "[default_policy]\nfailure_threshold = 2\n";

#[test]
fn default_policy_admits_one_trial_by_default() {
    let d = parse(DEFAULT_POLICY_ONLY).unwrap().default_policy.unwrap();
    assert_eq!(d.policy.half_open_max_connections, 1);
    assert_eq!(d.policy.trial_connect_timeout, Duration::from_secs(1));
}

#[test]
fn default_policy_refuses_zero_trials_set_there_or_in_defaults() {
    for text in [
        "[default_policy]\nhalf_open_max_connections = 0\n",
        "[defaults]\nhalf_open_max_connections = 0\n[default_policy]\n",
    ] {
        let (field, reason) = invalid_field(text);
        assert_eq!(field, "default_policy.half_open_max_connections", "{text}");
        assert!(
            reason.contains("the default policy has no probe") && reason.contains("1..=255"),
            "{reason}"
        );
    }
    // [defaults] may say 0 for the upstreams as long as the default policy overrides it.
    let c = parse(
        "[defaults]\nhalf_open_max_connections = 0\n[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n[default_policy]\nhalf_open_max_connections = 2\n",
    )
    .unwrap();
    assert_eq!(c.upstreams[0].policy.half_open_max_connections, 0);
    assert_eq!(
        c.default_policy.unwrap().policy.half_open_max_connections,
        2
    );
}

#[test]
fn half_open_and_trial_timeout_merge_from_defaults() {
    let c = parse(
        "[defaults]\nhalf_open_max_connections = 3\ntrial_connect_timeout = '250ms'\n[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n[[upstream]]\nname='b'\nendpoints=['10.0.0.2:80']\nhalf_open_max_connections = 255\ntrial_connect_timeout = '60s'\n[default_policy]\n",
    )
    .unwrap();
    let (a, b) = (&c.upstreams[0].policy, &c.upstreams[1].policy);
    assert_eq!(
        (a.half_open_max_connections, a.trial_connect_timeout),
        (3, Duration::from_millis(250))
    );
    assert_eq!(
        (b.half_open_max_connections, b.trial_connect_timeout),
        (255, Duration::from_secs(60))
    );
    let d = c.default_policy.unwrap().policy;
    assert_eq!(
        (d.half_open_max_connections, d.trial_connect_timeout),
        (3, Duration::from_millis(250))
    );
}

#[test]
fn out_of_range_trial_settings_are_refused() {
    let up = "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n";
    for (extra, field, why) in [
        (
            "half_open_max_connections = 256",
            "upstream[0] (\"a\").half_open_max_connections",
            "between 0 and 255",
        ),
        (
            "trial_connect_timeout = '9ms'",
            "upstream[0] (\"a\").trial_connect_timeout",
            "between 10ms and 60s",
        ),
        (
            "trial_connect_timeout = '61s'",
            "upstream[0] (\"a\").trial_connect_timeout",
            "between 10ms and 60s",
        ),
    ] {
        let (got_field, reason) = invalid_field(&format!("{up}{extra}"));
        assert_eq!(got_field, field, "{extra}");
        assert!(reason.contains(why), "{reason}");
    }
    let (field, _) = invalid_field(&format!("[defaults]\ntrial_connect_timeout = '0s'\n{up}"));
    assert_eq!(field, "defaults.trial_connect_timeout");
    let ok = parse(&format!("{up}trial_connect_timeout = '10ms'")).unwrap();
    assert_eq!(
        ok.upstreams[0].policy.trial_connect_timeout,
        Duration::from_millis(10)
    );
}

#[test]
fn describe_says_how_half_open_recovers() {
    let probes_only = parse(MINIMAL).unwrap().describe();
    assert!(probes_only.contains("probes only"), "{probes_only}");
    let trials = parse("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nhalf_open_max_connections = 2\ntrial_connect_timeout = '300ms'\n")
        .unwrap()
        .describe();
    assert!(
        trials.contains("admits 2 application trial(s) at a time, each given 300ms"),
        "{trials}"
    );
}

#[test]
fn bare_ipv6_addresses_need_brackets() {
    // `::1:80` could be ::1 port 80 or the address ::1:80: brackets say which.
    for text in ["::1:80", "fd00::1", "fd00::1:80"] {
        let e = text.parse::<Endpoint>().unwrap_err();
        assert!(matches!(e, EndpointParseError::BareIpv6(..)), "{text}: {e}");
        assert!(e.to_string().contains(&format!("[{text}]")), "{e}");
    }
    assert!("::1:80"
        .parse::<Endpoint>()
        .unwrap_err()
        .to_string()
        .contains("[::1]:80"));
    let e: Endpoint = "[::1:80]".parse().unwrap();
    assert_eq!((e.net.to_string(), e.port), ("::1:80/128".into(), None));
    let e: Endpoint = "[fd00::1]:80".parse().unwrap();
    assert_eq!(e.port, Some(80));
    // A CIDR is unambiguous without brackets.
    assert!("fd00::/64".parse::<Endpoint>().is_ok());
}

fn upstream_with(endpoint: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname='a'\nendpoints=['{endpoint}']\nprobe={{address='10.9.9.9:80'}}\n{extra}\n"
    )
}

#[test]
fn catch_all_endpoints_need_allow_catch_all() {
    for ep in [
        "0.0.0.0/0",
        "0.0.0.0/0:*",
        "0.0.0.0/0:443",
        "::/0",
        "[::/0]:443",
        "[::ffff:0.0.0.0/96]:80",
        "10.0.0.0/0:80",
    ] {
        let (field, reason) = invalid_field(&upstream_with(ep, ""));
        assert_eq!(field, "upstream[0] (\"a\").endpoints[0]", "{ep}");
        assert!(reason.contains("allow_catch_all = true"), "{ep}: {reason}");
        // A catch-all covers loopback too: both opt-ins.
        let (_, reason) = invalid_field(&upstream_with(ep, "allow_catch_all = true"));
        assert!(reason.contains("allow_loopback = true"), "{ep}: {reason}");
        parse(&upstream_with(
            ep,
            "allow_catch_all = true\nallow_loopback = true",
        ))
        .unwrap();
    }
}

#[test]
fn loopback_endpoints_need_allow_loopback() {
    for ep in [
        "127.0.0.1:80",
        "127.5.0.0/16:*",
        "[::1]:80",
        "[::1]",
        "[::ffff:127.0.0.1]:80",
        "[::ffff:127.0.0.0/104]:*",
        "96.0.0.0/3:80",
    ] {
        let (field, reason) = invalid_field(&upstream_with(ep, ""));
        assert_eq!(field, "upstream[0] (\"a\").endpoints[0]", "{ep}");
        assert!(reason.contains("allow_loopback = true"), "{ep}: {reason}");
        parse(&upstream_with(ep, "allow_loopback = true")).unwrap();
    }
    // Next to loopback, not on it.
    parse(&upstream_with("128.0.0.0/8:80", "")).unwrap();
    parse(&upstream_with("[::2]:80", "")).unwrap();
}

#[test]
fn a_fallback_inside_another_upstream_is_refused() {
    for (fallback, other) in [
        ("10.0.0.9:1", "10.0.0.9:1"),
        ("10.0.0.9:1", "10.0.0.0/28:*"),
        ("10.0.0.9:1", "10.0.0.9"),
        ("[::ffff:10.0.0.9]:1", "10.0.0.0/24:1"),
        ("10.0.0.9:1", "[::ffff:10.0.0.9]:1"),
        ("[fd00::9]:1", "[fd00::/64]:*"),
    ] {
        // The other upstream comes later in the file.
        let text = format!(
            "[[upstream]]\nname='a'\nendpoints=['10.1.0.1:80']\nfallback='{fallback}'\n\
             [[upstream]]\nname='b'\nendpoints=['{other}']\nprobe={{address='10.2.0.1:80'}}\n"
        );
        let (field, reason) = invalid_field(&text);
        assert_eq!(
            field, "upstream[0] (\"a\").fallback[0]",
            "{fallback} in {other}"
        );
        assert!(reason.contains("bypass \"b\""), "{reason}");
    }
    // Next to the other upstream's endpoints is fine.
    parse(
        "[[upstream]]\nname='a'\nendpoints=['10.1.0.1:80']\nfallback='10.0.0.9:2'\n\
         [[upstream]]\nname='b'\nendpoints=['10.0.0.9:1']\n",
    )
    .unwrap();
}

#[test]
fn a_fallback_that_is_an_own_endpoint_is_refused_in_any_notation() {
    for (fallback, own) in [
        ("[::ffff:10.0.0.1]:80", "10.0.0.1:80"),
        ("10.0.0.1:80", "[::ffff:10.0.0.1]:80"),
        ("10.0.0.1:80", "10.0.0.0/24:*"),
        ("[fd00::1]:80", "[fd00::/64]:80"),
    ] {
        let text = format!(
            "[[upstream]]\nname='a'\nendpoints=['{own}']\nfallback='{fallback}'\nprobe={{address='10.2.0.1:80'}}\n"
        );
        let (field, reason) = invalid_field(&text);
        assert_eq!(field, "upstream[0] (\"a\").fallback[0]", "{fallback}");
        assert!(reason.contains("own endpoints"), "{reason}");
    }
}

#[test]
fn timings_beyond_their_maxima_are_refused() {
    for (key, value, field) in [
        ("probe_interval", "'2h'", "probe_interval"),
        ("probe_interval", "'5ms'", "probe_interval"),
        ("probe_timeout", "'61s'", "probe_timeout"),
        ("probe_timeout", "'0s'", "probe_timeout"),
        ("open_duration", "'1000000h'", "open_duration"),
    ] {
        let (got, _) = invalid_field(&format!("{MINIMAL}{key} = {value}\n"));
        assert_eq!(got, format!("upstream[0] (\"api\").{field}"));
        let (got, _) = invalid_field(&format!("[default_policy]\n{key} = {value}\n"));
        assert_eq!(got, format!("default_policy.{field}"));
    }
    parse(&format!(
        "{MINIMAL}probe_interval = '1h'\nprobe_timeout = '1m'\n"
    ))
    .unwrap();
}

#[test]
fn max_destinations_has_a_maximum() {
    let (field, reason) = invalid_field("[default_policy]\nmax_destinations = 4194305\n");
    assert_eq!(field, "default_policy.max_destinations");
    assert!(reason.contains("4194304"), "{reason}");
    parse("[default_policy]\nmax_destinations = 4194304\n").unwrap();
}

#[test]
fn metrics_listen_port_0_is_refused_and_non_loopback_warned() {
    let (field, _) = invalid_field(&format!(
        "[daemon]\nmetrics_listen = '127.0.0.1:0'\n{MINIMAL}"
    ));
    assert_eq!(field, "daemon.metrics_listen");
    assert!(parse(MINIMAL).unwrap().warnings().is_empty());
    let c = parse(&format!(
        "[daemon]\nmetrics_listen = '0.0.0.0:9464'\n{MINIMAL}"
    ))
    .unwrap();
    assert!(c.warnings()[0].contains("daemon.metrics_listen"));
}

#[test]
fn parse_errors_name_the_line_and_the_field() {
    for (text, line, field) in [
        (
            format!("{MINIMAL}failure_threshold = 'x'\n"),
            "line 5",
            "upstream[0].failure_threshold",
        ),
        (
            format!("{MINIMAL}failure_treshold = 3\n"),
            "line 5",
            "failure_treshold",
        ),
        (
            format!("{MINIMAL}open_duration = 'soon'\n"),
            "line 5",
            "upstream[0].open_duration",
        ),
        (
            format!("{MINIMAL}fallback = 5\n"),
            "line 5",
            "upstream[0].fallback",
        ),
        (
            format!("{MINIMAL}probe = {{ address = 1 }}\n"),
            "line 5",
            "upstream[0].probe.address",
        ),
        (
            "[default_policy]\nmax_destinations = -1\n".to_string(),
            "line 2",
            "default_policy.max_destinations",
        ),
        (
            "[default_policy]\n\nprobe_timeout = 3\n".to_string(),
            "line 3",
            "default_policy.probe_timeout",
        ),
        (
            "[defaults]\nopen_duration = 5\n".to_string(),
            "line 2",
            "defaults.open_duration",
        ),
        (
            "[[upstream]]\nname = 'a'\nendpoints = ['10.0.0.1:80']\n[x\n".to_string(),
            "line 4",
            "",
        ),
    ] {
        let e = parse(&text).unwrap_err();
        let shown = e.to_string();
        assert!(matches!(e, ConfigError::Parse { .. }), "{shown}");
        assert!(
            shown.contains(line) && shown.contains(field),
            "{text:?}: {shown}"
        );
        assert!(!shown.contains('\n'), "one line: {shown}");
    }
}

#[test]
fn a_config_file_is_read_up_to_a_limit() {
    let e = Config::from_file(Path::new("/dev/zero")).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::TooLarge {
                limit: MAX_CONFIG_BYTES,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("/dev/zero") && e.to_string().contains("4194304"));
}

/// The README's configuration example stays a valid config, and so does its
/// alert example added to it.
#[test]
fn the_readme_examples_are_valid() {
    let readme = include_str!("../../../README.md");
    let block_after = |heading: &str| {
        let from = readme.find(heading).expect("the README's section") + heading.len();
        let start = readme[from..].find("```toml\n").expect("a toml block") + from + 8;
        let block = &readme[start..];
        &block[..block.find("```").expect("the block's end")]
    };
    let example = block_after("## Configuration reference");
    // Its cgroup is an example path that need not exist here; parse checks no paths.
    let config = Config::parse(std::path::Path::new("README.md"), example)
        .unwrap_or_else(|e| panic!("the README's example: {e}"));
    // payments, payments-dr, and search's three endpoints.
    assert_eq!(config.upstreams.len(), 5);
    assert_eq!(
        config.upstreams[2]
            .service
            .as_ref()
            .map(|s| (s.name.as_str(), s.eject_cap())),
        Some(("search", 2))
    );
    let labels: Vec<&str> = config.upstreams[0]
        .fallbacks
        .iter()
        .map(|f| f.label.as_str())
        .collect();
    assert_eq!(labels, ["payments-dr", "127.0.0.1:9090"]);
    assert!(config.default_policy.is_some());
    let with_alert = format!("{example}{}", block_after("**Alerts.**"));
    let config = Config::parse(std::path::Path::new("README.md"), &with_alert)
        .unwrap_or_else(|e| panic!("the README's alert example: {e}"));
    assert_eq!(config.alerts.len(), 1);
}

#[test]
fn connect_timeout_is_the_kernels_unless_set_and_kept_in_bounds() {
    let up = "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n";
    assert_eq!(parse(up).unwrap().upstreams[0].policy.connect_timeout, None);
    let c = parse(&format!(
        "[defaults]\nconnect_timeout = '200ms'\n{up}[[upstream]]\nname='b'\nendpoints=['10.0.0.2:80']\nconnect_timeout = '3s'\n[default_policy]\n"
    ))
    .unwrap();
    // [defaults] reaches the upstreams, never the default policy, which covers
    // every destination: it takes its own.
    assert_eq!(
        c.default_policy.as_ref().unwrap().policy.connect_timeout,
        None
    );
    let own = parse(&format!(
        "{up}[default_policy]\nconnect_timeout = '200ms'\n"
    ))
    .unwrap();
    assert_eq!(
        own.default_policy.unwrap().policy.connect_timeout,
        Some(Duration::from_millis(200))
    );
    assert_eq!(
        c.upstreams[0].policy.connect_timeout,
        Some(Duration::from_millis(200))
    );
    assert_eq!(
        c.upstreams[1].policy.connect_timeout,
        Some(Duration::from_secs(3))
    );
    for bad in ["'199ms'", "'121s'"] {
        let (field, reason) = invalid_field(&format!("{up}connect_timeout = {bad}"));
        assert_eq!(field, "upstream[0] (\"a\").connect_timeout");
        assert!(reason.contains("between 200ms and 2m"), "{reason}");
    }
    let (field, _) = invalid_field(&format!("[default_policy]\nconnect_timeout = '1ms'\n{up}"));
    assert_eq!(field, "default_policy.connect_timeout");
}

/// A config that protects nothing (what a package ships: no upstream, the default
/// policy off) is valid, with a warning that says so.
#[test]
fn a_config_that_protects_nothing_is_accepted_with_a_warning() {
    for text in [
        "",
        "# all commented\n",
        "[default_policy]\nenabled = false\n",
    ] {
        let c = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(c.upstreams.is_empty() && c.default_policy.is_none());
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.contains("nothing to protect")),
            "{:?}",
            c.warnings()
        );
    }
    assert!(parse(MINIMAL)
        .unwrap()
        .warnings()
        .iter()
        .all(|w| !w.contains("nothing to protect")));
}

/// The config the package ships protects nothing, and each example in it, once
/// uncommented, is a valid config.
#[test]
fn the_shipped_config_is_valid_and_so_are_its_examples() {
    let shipped = include_str!("../../../deploy/debian/breaker.toml");
    let c = parse(shipped).unwrap();
    assert!(c.upstreams.is_empty() && c.default_policy.is_none());
    let is_toml = |l: &str| {
        l.starts_with('[')
            || l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
    };
    let uncommented: String = shipped
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_toml(rest) => format!("{rest}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let c = parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(c.upstreams[0].policy.failure_threshold, 3);
    assert_eq!(c.upstreams[0].policy.open_duration, Duration::from_secs(30));
    assert!(c.default_policy.is_some());
    assert_eq!(
        c.cgroup.as_deref(),
        Some(std::path::Path::new("system.slice/legacy-app.service"))
    );
}

#[test]
fn failure_rate_is_off_unless_a_threshold_is_set_and_takes_hystrix_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.upstreams[0].policy.rate, None);
    // window and minimum_connects alone in [defaults] turn nothing on...
    let c = parse(&format!(
        "[defaults]\nwindow = '30s'\nminimum_connects = 5\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.upstreams[0].policy.rate, None);
    let c = parse(&format!("{MINIMAL}failure_rate_threshold = 50\n")).unwrap();
    assert_eq!(
        c.upstreams[0].policy.rate,
        Some(RatePolicy {
            threshold_pct: 50,
            minimum_connects: 20,
            window: Duration::from_secs(10),
        })
    );
    // [defaults] under the upstream's own keys.
    let c = parse(&format!(
        "[defaults]\nfailure_rate_threshold = 25\nwindow = '1m'\n{MINIMAL}minimum_connects = 7\n"
    ))
    .unwrap();
    assert_eq!(
        c.upstreams[0].policy.rate,
        Some(RatePolicy {
            threshold_pct: 25,
            minimum_connects: 7,
            window: Duration::from_secs(60),
        })
    );
}

#[test]
fn failure_rate_bounds_are_refused_with_the_key_named() {
    for (extra, key, says) in [
        (
            "failure_rate_threshold = 0",
            "failure_rate_threshold",
            "between 1 and 100",
        ),
        (
            "failure_rate_threshold = 101",
            "failure_rate_threshold",
            "between 1 and 100",
        ),
        (
            "failure_rate_threshold = 50\nminimum_connects = 0",
            "minimum_connects",
            "between 1 and",
        ),
        (
            "failure_rate_threshold = 50\nwindow = '500ms'",
            "window",
            "between 1s and 10m",
        ),
        (
            "failure_rate_threshold = 50\nwindow = '11m'",
            "window",
            "between 1s and 10m",
        ),
    ] {
        let (field, reason) = invalid_field(&format!("{MINIMAL}{extra}\n"));
        assert!(field.ends_with(key), "{extra}: {field}");
        assert!(reason.contains(says), "{extra}: {reason}");
    }
}

#[test]
fn the_default_policy_refuses_a_failure_rate_and_does_not_inherit_one() {
    let (field, reason) = invalid_field("[default_policy]\nfailure_rate_threshold = 50\n");
    assert_eq!(field, "default_policy.failure_rate_threshold");
    assert!(
        reason.contains("not supported for the default policy"),
        "{reason}"
    );
    let c = parse(&format!(
        "[defaults]\nfailure_rate_threshold = 50\n{MINIMAL}[default_policy]\n"
    ))
    .unwrap();
    assert!(c.upstreams[0].policy.rate.is_some());
    assert_eq!(c.default_policy.unwrap().policy.rate, None);
}

#[test]
fn the_policy_is_explained_with_its_rate() {
    let c = parse(&format!(
        "{MINIMAL}failure_rate_threshold = 50\nminimum_connects = 20\n"
    ))
    .unwrap();
    let text = describe_policy(&c.upstreams[0].policy);
    assert!(
        text.starts_with(
            "opens after 5 consecutive failures or when 50 % of at least 20 connects in 10s fail"
        ),
        "{text}"
    );
}

#[test]
fn a_rate_key_without_a_threshold_in_an_upstream_is_refused() {
    for key in ["minimum_connects = 5", "window = '5s'"] {
        let (field, reason) = invalid_field(&format!("{MINIMAL}{key}\n"));
        assert!(
            field.ends_with(key.split(' ').next().unwrap()),
            "{key}: {field}"
        );
        assert!(
            reason.contains("no effect without failure_rate_threshold or slow_rate_threshold"),
            "{reason}"
        );
    }
    // With the threshold from [defaults], it is the upstream's own setting.
    let c = parse(&format!(
        "[defaults]\nfailure_rate_threshold = 40\n{MINIMAL}minimum_connects = 5\n"
    ))
    .unwrap();
    assert_eq!(c.upstreams[0].policy.rate.unwrap().minimum_connects, 5);
}

#[test]
fn count_defaults_to_every_failure_and_names_what_it_leaves_out() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.upstreams[0].policy.count, CountSet::ALL);
    let c = parse(&format!(
        "[defaults]\ncount = ['timeout']\n{MINIMAL}[[upstream]]\nname = 'b'\nendpoints = ['10.1.2.4:80']\ncount = ['refused', 'unreachable']\n"
    ))
    .unwrap();
    assert_eq!(c.upstreams[0].policy.count.names(), ["timeout"]);
    assert_eq!(
        c.upstreams[1].policy.count.names(),
        ["refused", "unreachable"]
    );
    assert!(describe_policy(&c.upstreams[0].policy)
        .starts_with("opens after 5 consecutive failures (counting timeout only)"));
}

#[test]
fn count_refuses_unknown_and_empty_lists_in_one_line() {
    for (list, says) in [
        ("['refused', 'reset']", "\"reset\" is not an outcome"),
        ("[]", "counts nothing, so the breaker would never open"),
    ] {
        let err = parse(&format!("{MINIMAL}count = {list}\n")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(says), "{list}: {text}");
        assert!(
            text.contains("line 5, column 9, upstream[0].count: "),
            "{list}: {text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}

#[test]
fn interfaces_and_packet_actions_parse_with_their_defaults() {
    let c = parse(&format!(
        "{MINIMAL}packet_action = 'drop'\n[[interface]]\nname = 'tap0'\n[[interface]]\nname = 'br-lan'\nhook = 'tc'\n"
    ))
    .unwrap();
    assert_eq!(
        c.interfaces,
        [
            Interface {
                name: "tap0".into(),
                hook: Hook::Auto
            },
            Interface {
                name: "br-lan".into(),
                hook: Hook::Tc
            }
        ]
    );
    assert_eq!(c.upstreams[0].packet_action, PacketAction::Drop);
    assert!(c.describe().contains("packet path on tap0 (hook auto)"));
    assert!(c.describe().contains("a rejected SYN is dropped"));
    assert_eq!(
        parse(MINIMAL).unwrap().upstreams[0].packet_action,
        PacketAction::Reject
    );
    assert!(parse(MINIMAL).unwrap().interfaces.is_empty());
}

#[test]
fn bad_interfaces_and_packet_actions_name_the_field_and_why() {
    for (extra, field, says) in [
        (
            "[[interface]]\nname = ''\n",
            "interface[0].name",
            "not an interface name",
        ),
        (
            "[[interface]]\nname = 'a-very-long-name0'\n",
            "interface[0].name",
            "1 to 15 characters",
        ),
        (
            "[[interface]]\nname = '../eth0'\n",
            "interface[0].name",
            "no '/'",
        ),
        (
            "[[interface]]\nname = 'eth0'\n[[interface]]\nname = 'eth0'\n",
            "interface[1].name",
            "listed twice",
        ),
        (
            "[[interface]]\nname = 'eth0'\nhook = 'ebpf'\n",
            "interface[0].hook",
            "is not a hook",
        ),
    ] {
        let (f, reason) = invalid_field(&format!("{MINIMAL}{extra}"));
        assert_eq!(f, field, "{extra}");
        assert!(reason.contains(says), "{extra}: {reason}");
    }
    for (action, says) in [
        ("packet_action = 'bounce'\n", "is not a packet action"),
        ("packet_action = 'redirect'\n", "needs a fallback"),
        (
            "packet_action = 'redirect'\nfallback = '127.0.0.1:9000'\n",
            "loopback",
        ),
        (
            "packet_action = 'redirect'\nfallback = ['10.0.9.1:80', '[::1]:80']\n",
            "loopback",
        ),
        (
            "packet_action = 'redirect'\nfallback = '0.0.0.0:80'\n",
            "routed to",
        ),
        (
            "packet_action = 'redirect'\nfallback = '0.1.2.3:80'\n",
            "routed to",
        ),
        (
            "packet_action = 'redirect'\nfallback = '224.0.0.1:80'\n",
            "routed to",
        ),
        (
            "packet_action = 'redirect'\nfallback = '255.255.255.255:80'\n",
            "routed to",
        ),
        (
            "packet_action = 'redirect'\nfallback = '[fe80::1]:80'\n",
            "routed to",
        ),
        (
            "packet_action = 'redirect'\nfallback = '[::ffff:127.0.0.1]:80'\n",
            "routed to",
        ),
    ] {
        let (f, reason) = invalid_field(&format!("{MINIMAL}{action}"));
        assert!(f.ends_with(".packet_action"), "{action}: {f}");
        assert!(reason.contains(says), "{action}: {reason}");
    }
}

#[test]
fn a_redirect_with_no_fallback_of_its_endpoints_family_is_warned_about() {
    let c = parse(&format!(
        "{MINIMAL}packet_action = 'redirect'\nfallback = '[fd00::9]:80'\n"
    ))
    .unwrap();
    assert!(
        c.warnings().iter().any(|w| w.contains("no IPv4 fallback")),
        "{:?}",
        c.warnings()
    );
    let ok = parse(&format!(
        "{MINIMAL}packet_action = 'redirect'\nfallback = '10.0.9.1:80'\n"
    ))
    .unwrap();
    assert!(ok.warnings().iter().all(|w| !w.contains("fallback")));
    // A service's endpoints are steered to each other: no fallback needed,
    // but a family no other endpoint has is warned about.
    let service = parse(
        "[[upstream]]\nname = 'svc'\nper_endpoint = true\npacket_action = 'redirect'\n\
         endpoints = ['10.1.2.3:80', '10.1.2.4:80', '[fd00::3]:80']\n",
    )
    .unwrap();
    let warned: Vec<String> = service
        .warnings()
        .into_iter()
        .filter(|w| w.contains("fallback"))
        .collect();
    assert_eq!(
        warned,
        [
            "upstream \"svc/[fd00::3]:80\": packet_action = \"redirect\", but no IPv6 fallback: \
          its IPv6 endpoints' rejected SYNs get a reset, as with \"reject\""
        ],
        "{warned:?}"
    );
    // And the endpoints it steers to must be routable, as fallbacks are.
    let (f, reason) = invalid_field(
        "[[upstream]]\nname = 'svc'\nper_endpoint = true\npacket_action = 'redirect'\n\
         endpoints = ['10.1.2.3:80', '169.254.1.1:80']\n",
    );
    assert!(f.ends_with(".packet_action"), "{f}");
    assert!(reason.contains("169.254.1.1:80"), "{reason}");
    let half = parse(
        "[[upstream]]\nname = 'api'\nendpoints = ['10.1.2.3:80', '[fd00::3]:80']\n\
         packet_action = 'redirect'\nfallback = '10.0.9.1:80'\n",
    )
    .unwrap();
    assert!(
        half.warnings()
            .iter()
            .any(|w| w.contains("no IPv6 fallback")),
        "{:?}",
        half.warnings()
    );
}

#[test]
fn a_redirect_beside_an_interface_on_xdp_is_refused() {
    let (f, reason) = invalid_field(&format!(
        "{MINIMAL}packet_action = 'redirect'\nfallback = '10.0.9.1:80'\n\
         [[interface]]\nname = 'tap0'\n[[interface]]\nname = 'eth1'\nhook = 'xdp'\n"
    ));
    assert_eq!(f, "interface[1].hook");
    assert!(reason.contains("need TC"), "{reason}");
}

#[test]
fn icmp_and_redirect_parse_and_say_what_a_rejected_syn_gets() {
    let with =
        |action: &str| parse(&format!("{MINIMAL}{action}[[interface]]\nname = 'tap0'\n")).unwrap();
    let icmp = with("packet_action = 'icmp'\n");
    assert_eq!(icmp.upstreams[0].packet_action, PacketAction::Icmp);
    assert!(icmp.describe().contains("ICMP port unreachable"));
    assert!(!icmp.packet_nat(), "no redirect, no NAT tables");
    let redirect = with("packet_action = 'redirect'\nfallback = '10.0.9.1:80'\n");
    assert_eq!(redirect.upstreams[0].packet_action, PacketAction::Redirect);
    assert!(redirect
        .describe()
        .contains("sent to the first fallback that takes it"));
    assert!(redirect.packet_nat());
    assert_eq!(redirect.map_sizes().nat, crate::config::PACKET_FLOW_SLOTS);
    assert_eq!(icmp.map_sizes().nat, 1);
}

#[test]
fn the_open_time_grows_only_when_asked_and_its_bounds_are_refused_with_the_key_named() {
    let c = parse(MINIMAL).unwrap();
    let p = c.upstreams[0].policy;
    assert_eq!(
        (p.max_open_duration, p.jitter_pct),
        (p.open_duration, 0),
        "no growth, no jitter by default"
    );
    // A longer open_duration carries the default ceiling with it.
    let c = parse(&format!("{MINIMAL}open_duration = '10m'\n")).unwrap();
    assert_eq!(
        c.upstreams[0].policy.max_open_duration,
        Duration::from_secs(600)
    );
    // [defaults] gives both to every upstream, and an upstream overrides them.
    let c = parse(&format!(
        "[defaults]\nmax_open_duration = '5m'\njitter = 10\n{MINIMAL}jitter = 20\n"
    ))
    .unwrap();
    let p = c.upstreams[0].policy;
    assert_eq!(
        (p.max_open_duration, p.jitter_pct),
        (Duration::from_secs(300), 20)
    );
    let text = describe_policy(&p);
    assert!(
        text.contains("open 30s, doubling at each reopen up to 5m plus up to 20 % at random;"),
        "{text}"
    );
    for (extra, key, says) in [
        (
            "max_open_duration = '10s'",
            "max_open_duration",
            "between open_duration (30s) and 24h, got 10s",
        ),
        (
            "max_open_duration = '25h'",
            "max_open_duration",
            "between open_duration (30s) and 24h",
        ),
        ("jitter = 101", "jitter", "between 0 and 100, got 101"),
        (
            "success_threshold = 256",
            "success_threshold",
            "between 1 and 255",
        ),
    ] {
        let (field, reason) = invalid_field(&format!("{MINIMAL}{extra}\n"));
        assert!(field.ends_with(key), "{extra}: {field}");
        assert!(reason.contains(says), "{extra}: {reason}");
    }
}

#[test]
fn slow_connects_are_off_by_default_and_take_the_rate_window() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.upstreams[0].policy.slow, None);
    assert!(!c.upstreams[0].policy.count.slow);
    let c = parse(&format!(
        "[defaults]\nslow_connect_threshold = '300ms'\n{MINIMAL}slow_rate_threshold = 50\nminimum_connects = 4\ncount = ['refused', 'timeout', 'unreachable', 'slow']\n"
    ))
    .unwrap();
    let p = c.upstreams[0].policy;
    assert_eq!(
        p.slow,
        Some(SlowPolicy {
            threshold: Duration::from_millis(300),
            rate: Some(RatePolicy {
                threshold_pct: 50,
                minimum_connects: 4,
                window: Duration::from_secs(10),
            }),
        })
    );
    assert!(p.count.slow);
    assert_eq!(p.rate, None, "the failure rate stays off");
    assert_eq!(p.window(), p.slow.unwrap().rate);
    let text = describe_policy(&p);
    assert!(
        text.contains("a connect answered after 300ms or more is slow and counts as a failure; opens when 50 % of at least 4 connects in 10s are slow"),
        "{text}"
    );
    // The default policy may count slow connects, but keeps no window.
    let c =
        parse("[default_policy]\nslow_connect_threshold = '200ms'\ncount = ['slow']\n").unwrap();
    let d = c.default_policy.unwrap().policy;
    assert_eq!(d.slow.unwrap().threshold, Duration::from_millis(200));
    assert_eq!(d.count.names(), ["slow"]);
}

#[test]
fn slow_connect_keys_are_refused_with_the_reason_named() {
    for (extra, key, says) in [
        (
            "slow_rate_threshold = 50",
            "slow_rate_threshold",
            "needs slow_connect_threshold",
        ),
        ("count = ['slow']", "count", "needs slow_connect_threshold"),
        (
            "slow_connect_threshold = '5ms'",
            "slow_connect_threshold",
            "at least 10ms",
        ),
        (
            "slow_connect_threshold = '1s'",
            "slow_connect_threshold",
            "shorter than connect_timeout (1s, the kernel's)",
        ),
        (
            "connect_timeout = '300ms'\nslow_connect_threshold = '400ms'",
            "slow_connect_threshold",
            "shorter than connect_timeout (300ms)",
        ),
        (
            "slow_connect_threshold = '100ms'\nslow_rate_threshold = 0",
            "slow_rate_threshold",
            "between 1 and 100",
        ),
        (
            "slow_connect_threshold = '100ms'\nslow_rate_threshold = 50\nwindow = '500ms'",
            "window",
            "between 1s and 10m",
        ),
    ] {
        let (field, reason) = invalid_field(&format!("{MINIMAL}{extra}\n"));
        assert!(field.ends_with(key), "{extra}: {field}");
        assert!(reason.contains(says), "{extra}: {reason}");
    }
    let (field, reason) = invalid_field(
        "[default_policy]\nslow_connect_threshold = '100ms'\nslow_rate_threshold = 50\n",
    );
    assert_eq!(field, "default_policy.slow_rate_threshold");
    assert!(
        reason.contains("not supported for the default policy"),
        "{reason}"
    );
    // A window key is the slow rate's as much as the failure rate's.
    let c = parse(&format!(
        "{MINIMAL}slow_connect_threshold = '100ms'\nslow_rate_threshold = 50\nwindow = '20s'\n"
    ))
    .unwrap();
    assert_eq!(
        c.upstreams[0].policy.window().unwrap().window,
        Duration::from_secs(20)
    );
}

#[test]
fn the_default_policy_does_not_inherit_slow_connects_from_defaults() {
    let c = parse(&format!(
        "[defaults]\nslow_connect_threshold = '300ms'\ncount = ['timeout', 'slow']\n{MINIMAL}[default_policy]\n"
    ))
    .unwrap();
    assert!(c.upstreams[0].policy.slow.is_some() && c.upstreams[0].policy.count.slow);
    let d = c.default_policy.unwrap().policy;
    assert_eq!(d.slow, None);
    assert_eq!(d.count.names(), ["timeout"]);
    // "slow" alone in [defaults]: the default policy counts every failure rather
    // than nothing.
    let c = parse(&format!(
        "[defaults]\nslow_connect_threshold = '300ms'\ncount = ['slow']\n{MINIMAL}[default_policy]\n"
    ))
    .unwrap();
    assert_eq!(c.default_policy.unwrap().policy.count, CountSet::ALL);
    let text = describe_policy(&c.upstreams[0].policy);
    assert!(
        text.contains("(counting no failures, slow connects only"),
        "{text}"
    );
}

/// `a`'s chain: label and where each family goes.
fn chain(c: &Config, name: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let up = c.upstreams.iter().find(|u| u.name == name).unwrap();
    up.fallbacks
        .iter()
        .map(|f| {
            (
                f.label.clone(),
                f.v4.map(|a| a.to_string()),
                f.v6.map(|a| a.to_string()),
            )
        })
        .collect()
}

const SECONDARY: &str =
    "[[upstream]]\nname='b'\nendpoints=['10.0.2.1:80', '10.0.2.0/24:*', '[fd00::2]:443']\n";

#[test]
fn ordered_fallbacks_name_upstreams_by_their_first_single_address_and_follow_their_chains() {
    let c = parse(&format!(
        "[[upstream]]\nname='a'\nendpoints=['10.0.1.1:80']\nfallbacks=['b', '10.0.9.1:80']\n\
         {SECONDARY}fallbacks=['[fd00::9]:80']\n\
         [[upstream]]\nname='c'\nendpoints=['10.0.3.1:80']\nfallbacks='b'\n"
    ))
    .unwrap();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        chain(&c, "a"),
        [
            ("b".into(), s("10.0.2.1:80"), s("[fd00::2]:443")),
            // b's own fallback right after b: where b's connects would go.
            ("[fd00::9]:80".into(), None, s("[fd00::9]:80")),
            ("10.0.9.1:80".into(), s("10.0.9.1:80"), None),
        ]
    );
    assert_eq!(chain(&c, "c").len(), 2);
    assert_eq!(c.upstreams[0].fallbacks[0].upstream.as_deref(), Some("b"));
    assert_eq!(c.upstreams[0].fallbacks[2].upstream, None);
    // check-config says it in words.
    let d = c.describe();
    assert!(
        d.contains(
            "fallbacks: b (10.0.2.1:80, [fd00::2]:443), then [fd00::9]:80, then 10.0.9.1:80"
        ),
        "{d}"
    );
}

#[test]
fn a_fallback_no_connect_could_reach_is_left_out_of_the_chain() {
    // a's address takes every IPv4 connect before b's chain is reached; b itself
    // still takes IPv6 ones. A name met twice is tried once.
    let c = parse(&format!(
        "[[upstream]]\nname='a'\nendpoints=['10.0.1.1:80']\nfallbacks=['10.0.9.1:80', 'b', 'd']\n\
         {SECONDARY}fallbacks=['10.0.9.2:80', 'd']\n\
         [[upstream]]\nname='d'\nendpoints=['10.0.4.1:80']\n"
    ))
    .unwrap();
    let labels: Vec<String> = chain(&c, "a").into_iter().map(|h| h.0).collect();
    assert_eq!(labels, ["10.0.9.1:80", "b"]);
    let warnings = c.warnings();
    for gone in ["10.0.9.2:80", "d"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("fallback \"{gone}\" is never reached"))),
            "{gone}: {warnings:?}"
        );
    }
}

#[test]
fn bad_fallbacks_are_refused_with_the_entry_that_is_wrong() {
    let a = "[[upstream]]\nname='a'\nendpoints=['10.0.1.1:80']\n";
    for (text, field, says) in [
        (
            format!("{a}fallbacks=['nobody']\n"),
            "upstream[0] (\"a\").fallbacks[0]",
            "neither an upstream's name nor an address:port",
        ),
        (
            format!("{a}fallbacks=['a']\n"),
            "upstream[0] (\"a\").fallbacks[0]",
            "its own fallback",
        ),
        (
            format!("{a}fallbacks=['10.0.9.1']\n"),
            "upstream[0] (\"a\").fallbacks[0]",
            "needs a port",
        ),
        (
            format!("{a}fallbacks=['10.0.9.1:80', '10.0.9.2:80']\n"),
            "upstream[0] (\"a\").fallbacks[1]",
            "never tried",
        ),
        (
            format!("{a}fallbacks=['b']\nfallback='10.0.9.1:80'\n{SECONDARY}"),
            "upstream[0] (\"a\").fallbacks",
            "not both",
        ),
        (
            format!("{a}fallbacks=['b']\n{SECONDARY}fallbacks=['c']\n[[upstream]]\nname='c'\nendpoints=['10.0.3.1:80']\nfallbacks=['a']\n"),
            "upstream[2] (\"c\").fallbacks[0]",
            "\"a\" leads back (a -> b -> c -> a)",
        ),
        (
            format!("{a}fallbacks=['b']\n[[upstream]]\nname='b'\nendpoints=['10.0.2.0/24:80', '10.0.3.1']\nprobe={{address='10.0.2.1:80'}}\n"),
            "upstream[0] (\"a\").fallbacks[0]",
            "no endpoint of a single address and port",
        ),
        (
            format!(
                "{a}fallbacks=['b', '[fd00::9]:1']\n{SECONDARY}fallbacks=['c', '10.0.9.1:80']\n\
                 [[upstream]]\nname='c'\nendpoints=['10.0.3.1:80']\nfallbacks=['d']\n\
                 [[upstream]]\nname='d'\nendpoints=['10.0.4.1:80']\n"
            ),
            "upstream[0] (\"a\").fallbacks",
            "the chain is b, c, d, 10.0.9.1:80, [fd00::9]:1 (5 hops): at most 4",
        ),
        (
            // The older spelling is named as written.
            format!(
                "{a}fallback=['b', '[fd00::9]:1']\n{SECONDARY}fallbacks=['c', '10.0.9.1:80']\n\
                 [[upstream]]\nname='c'\nendpoints=['10.0.3.1:80']\nfallbacks=['d']\n\
                 [[upstream]]\nname='d'\nendpoints=['10.0.4.1:80']\n"
            ),
            "upstream[0] (\"a\").fallback",
            "(5 hops): at most 4",
        ),
        (
            format!("{a}fallbacks=['[fd00::1]']\n"),
            "upstream[0] (\"a\").fallbacks[0]",
            "needs a port",
        ),
        (
            format!("{a}fallbacks=[5]\n"),
            "upstream[0].fallbacks",
            "an upstream's name or an address:port",
        ),
    ] {
        let (f, reason) = match Config::parse(Path::new("t.toml"), &text) {
            Err(ConfigError::Invalid { field, reason, .. }) => (field, reason),
            Err(ConfigError::Parse { at, message, .. }) => (at, message),
            other => panic!("{text}: {other:?}"),
        };
        assert!(f.contains(field), "{text}: {f}");
        assert!(reason.contains(says), "{text}: {reason}");
    }
}

#[test]
fn a_redirect_checks_a_named_fallbacks_address_too() {
    let (field, reason) = invalid_field(
        "[[upstream]]\nname='a'\nendpoints=['10.0.1.1:80']\nfallbacks=['b']\npacket_action='redirect'\n\
         [[upstream]]\nname='b'\nendpoints=['127.0.0.1:80']\nallow_loopback=true\n",
    );
    assert_eq!(field, "upstream[0] (\"a\").packet_action");
    assert!(reason.contains("b sends to 127.0.0.1:80"), "{reason}");
}

#[test]
fn names_of_digits_and_dots_are_upstreams_and_names_that_are_addresses_are_refused() {
    let c = parse(
        "[[upstream]]\nname='a'\nendpoints=['10.0.1.1:80']\nfallbacks=['2024', '1.2']\n\
         [[upstream]]\nname='2024'\nendpoints=['10.0.2.1:80']\n\
         [[upstream]]\nname='1.2'\nendpoints=['[fd00::2]:80']\n",
    )
    .unwrap();
    let labels: Vec<String> = chain(&c, "a").into_iter().map(|h| h.0).collect();
    assert_eq!(labels, ["2024", "1.2"]);
    for name in ["10.0.0.1", "1.2.3.4"] {
        let (field, reason) = invalid_field(&format!(
            "[[upstream]]\nname='{name}'\nendpoints=['10.0.1.1:80']\n"
        ));
        assert!(field.ends_with(".name"), "{name}: {field}");
        assert!(reason.contains("reads as an address"), "{name}: {reason}");
    }
}

/// Many upstreams each naming the next two: resolved at once (each upstream
/// walked once, not once per path), and refused for the chain's length.
#[test]
fn a_ladder_of_upstreams_naming_each_other_resolves_in_linear_time() {
    let n = 60;
    let mut text = String::new();
    for i in 0..n {
        let next: Vec<String> = [i + 1, i + 2]
            .iter()
            .filter(|&&k| k < n)
            .map(|k| format!("'u{k}'"))
            .collect();
        text.push_str(&format!(
            "[[upstream]]\nname='u{i}'\nendpoints=['10.1.0.{}:80']\nfallbacks=[{}]\n",
            i + 1,
            next.join(", ")
        ));
    }
    let started = std::time::Instant::now();
    let (field, reason) = invalid_field(&text);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    assert_eq!(field, "upstream[0] (\"u0\").fallbacks");
    assert!(
        reason.contains("u1, u2, u3, u4, u5, u6, ... (59 hops): at most 4"),
        "{reason}"
    );
}
