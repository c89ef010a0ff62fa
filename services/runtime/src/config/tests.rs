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
