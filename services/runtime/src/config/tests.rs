use super::*;
use std::collections::HashMap;

fn env(vars: &[(&str, &str)]) -> config::Environment {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config::Environment::with_prefix("QUARK").source(Some(map))
}

#[test]
fn defaults_then_file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quark.toml");
    std::fs::write(
        &file,
        "data_dir = \"/srv/quark\"\n[bus]\nbrokers = \"file:9092\"\npartitions = 6\n\
         [curate]\nlanguages = [\"eng\", \"fra\"]\n[curate.minhash]\nthreshold = 0.7\n",
    )
    .unwrap();
    let settings = Settings::load_from(
        Some(&file),
        env(&[
            ("QUARK__BUS__BROKERS", "env-1:9092,env-2:9092"),
            ("QUARK__CURATE__MIN_WORDS", "20"),
        ]),
    )
    .unwrap();
    assert_eq!(settings.curate.languages, ["eng", "fra"]);
    assert_eq!(settings.curate.minhash.threshold, 0.7);
    assert_eq!(
        settings.curate.minhash.bands, 16,
        "other MinHash keys keep their defaults"
    );
    assert_eq!(settings.curate.min_words, 20);
    assert_eq!(settings.data_dir, PathBuf::from("/srv/quark"));
    assert_eq!(settings.bus.partitions, 6);
    assert_eq!(settings.bus.brokers, "env-1:9092,env-2:9092");
    assert_eq!(settings.bus.replication, 1);
    assert_eq!(
        settings.database_url(),
        "sqlite:///srv/quark/quark.db?mode=rwc"
    );
}

#[test]
fn object_storage_is_configured_from_the_environment_and_its_secret_is_not_shown() {
    let settings = Settings::load_from(
        None,
        env(&[
            ("QUARK__ARTIFACTS__URL", "s3://bucket/prefix"),
            ("QUARK__ARTIFACTS__ENDPOINT", "http://minio:9000"),
            ("QUARK__ARTIFACTS__ALLOW_HTTP", "true"),
            ("QUARK__ARTIFACTS__SECRET_ACCESS_KEY", "hunter2"),
        ]),
    )
    .unwrap();
    assert_eq!(settings.artifacts.url, "s3://bucket/prefix");
    assert_eq!(settings.artifacts.endpoint, "http://minio:9000");
    assert!(settings.artifacts.allow_http);
    assert_eq!(settings.artifacts.secret_access_key, "hunter2");
    let shown = format!("{settings:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn a_knowledge_index_on_object_storage_takes_its_options_from_the_environment() {
    let settings = Settings::load_from(
        None,
        env(&[
            ("QUARK__RETRIEVAL__URI", "s3://knowledge/indexes"),
            (
                "QUARK__RETRIEVAL__STORAGE_OPTIONS__AWS_ENDPOINT",
                "http://minio:9000",
            ),
            ("QUARK__RETRIEVAL__STORAGE_OPTIONS__ALLOW_HTTP", "true"),
            (
                "QUARK__RETRIEVAL__STORAGE_OPTIONS__AWS_SECRET_ACCESS_KEY",
                "hunter2",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(settings.retrieval.uri, "s3://knowledge/indexes");
    let options = &settings.retrieval.storage_options.0;
    assert_eq!(options["aws_endpoint"], "http://minio:9000");
    assert_eq!(options["allow_http"], "true");
    assert_eq!(options["aws_secret_access_key"], "hunter2");
    let shown = format!("{settings:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("http://minio:9000"), "{shown}");
}

#[test]
fn a_bad_value_names_its_key() {
    let error = Settings::load_from(None, env(&[("QUARK__BUS__PARTITIONS", "many")]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("bus.partitions"), "{error}");
}

#[test]
fn an_unknown_key_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quark.toml");
    std::fs::write(&file, "[bus]\npartitons = 6\n").unwrap();
    let error = Settings::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("partitons"), "{error}");
}

#[test]
fn a_missing_explicit_file_is_an_error() {
    let error =
        Settings::load_from(Some(Path::new("/nonexistent/quark.toml")), env(&[])).unwrap_err();
    assert!(matches!(error, ConfigError::MissingFile(_)));
}

#[test]
fn router_rules_come_from_the_file_and_inconsistent_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quark.toml");
    let rules = "[gateway.router]\nshadow_share = 0.05\n\
         [[gateway.router.rules]]\nname = \"code\"\nintent = \"code\"\nalias = \"coder\"\nfallback = \"champion\"\nmax_tokens = 64\n\
         [[gateway.router.rules]]\nname = \"default\"\nalias = \"champion\"\ncanary_share = 0.1\ncanary_alias = \"challenger\"\n";
    std::fs::write(&file, rules).unwrap();
    let router = Settings::load_from(Some(&file), env(&[]))
        .unwrap()
        .gateway
        .router;
    assert_eq!(router.shadow_alias.0, "challenger");
    assert_eq!(router.rules.len(), 2);
    assert_eq!(router.rules[0].intent.as_deref(), Some("code"));
    assert_eq!(router.rules[0].max_tokens, Some(64));
    assert_eq!(router.rules[1].intent, None);
    assert_eq!(router.rules[1].canary_share, 0.1);

    std::fs::write(
        &file,
        rules.replace("canary_share = 0.1", "canary_share = 1.5"),
    )
    .unwrap();
    let error = Settings::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("canary_share 1.5"), "{error}");
    let no_canary = rules.replace("canary_alias = \"challenger\"\n", "");
    std::fs::write(&file, no_canary).unwrap();
    let error = Settings::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("without canary_alias"), "{error}");
}

#[test]
fn tls_and_sasl_settings_reach_librdkafka_and_the_password_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quark.toml");
    std::fs::write(
        &file,
        "[bus]\nbrokers = \"kafka-1.example:9093\"\n[bus.properties]\n\
         \"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"quark\"\n\"sasl.password\" = \"hunter2\"\n\
         \"ssl.ca.location\" = \"/etc/ssl/certs/ca-certificates.crt\"\n",
    )
    .unwrap();
    let settings = Settings::load_from(Some(&file), env(&[])).unwrap();
    let consumer = settings.bus.consumer_config("quark-test", "group");
    for (key, value) in [
        ("bootstrap.servers", "kafka-1.example:9093"),
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "quark"),
        ("sasl.password", "hunter2"),
        ("ssl.ca.location", "/etc/ssl/certs/ca-certificates.crt"),
    ] {
        assert_eq!(consumer.get(key), Some(value), "{key}");
    }
    // librdkafka takes them (it loads the CA file and checks the mechanism when the client is
    // made; it connects later), and names a property it does not know.
    quark_events::bus::Publisher::new(&settings.bus, "quark-test").unwrap();
    let mut misspelt = settings.bus.clone();
    misspelt
        .properties
        .insert("security.protocl".into(), "SASL_SSL".into());
    let refused = quark_events::bus::Publisher::new(&misspelt, "quark-test")
        .err()
        .expect("a property librdkafka does not know");
    assert!(
        refused.to_string().contains("security.protocl"),
        "{refused}"
    );
    let shown = format!("{settings:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("\"sasl.password\": \"<redacted>\""),
        "{shown}"
    );
}
