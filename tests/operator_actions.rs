//! Operator actions on the command line against a running registry (real broker, real
//! SQLite): `quark rollback` and `quark promote` ask the registry (promotion.requested) and
//! print its move; who asked and why ride on model.promoted, and `quark models --at` shows
//! them; a request the registry cannot carry out comes back as a clear error.

use quark_e2e::*;
use quark_events::bus::Publisher;
use quark_events::{Alias, Id, Timestamp};
use quark_registry::{RegistryService, alias_of};
use serde_json::Value;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

async fn quark(cluster: &Cluster, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(bin("quark"));
    command
        .args(args)
        .env("QUARK__DATA_DIR", cluster.dir.path())
        .env("QUARK__BUS__BROKERS", &cluster.broker.address)
        .env("QUARK__TELEMETRY__LOG", "warn");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quark_rollback_and_promote_go_through_the_registry() {
    let cluster = Cluster::start().await;
    let db = open::<quark::Migrator>(cluster.dir.path(), "quark.db").await;
    let registry = RegistryService::new(db.clone(), quark_runtime::Settings::default().registry);
    cluster.consume(Arc::new(registry), &db);
    let publisher = Publisher::new(&cluster.broker.bus(), "test").unwrap();
    let (a, first) = through_the_gate();
    let (b, second) = through_the_gate();
    publisher.publish_all(&first).await.unwrap();
    until("a champion", Duration::from_secs(60), || async {
        alias_of(&db, Alias::Champion).await.unwrap() == Some(a)
    })
    .await;
    publisher.publish_all(&second).await.unwrap();
    until("b champion", Duration::from_secs(60), || async {
        alias_of(&db, Alias::Champion).await.unwrap() == Some(b)
    })
    .await;

    let back = quark(
        &cluster,
        &["rollback", "--reason", "b answers in French", "--by", "ops"],
    )
    .await;
    assert_eq!(
        stdout(&back),
        format!("champion → {a} (Rollback, was {b}) by ops")
    );
    assert_eq!(alias_of(&db, Alias::Champion).await.unwrap(), Some(a));
    // a was the first champion: nothing before it.
    let again = quark(&cluster, &["rollback"]).await;
    assert!(!again.status.success());
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(
        refused.contains("the registry refused: nothing to roll back to"),
        "{refused}"
    );

    let b_id = b.to_string();
    let up = quark(
        &cluster,
        &["promote", &b_id, "--reason", "fixed in b2", "--by", "ops"],
    )
    .await;
    assert_eq!(
        stdout(&up),
        format!("champion → {b} (Manual, was {a}) by ops")
    );
    let a_id = a.to_string();
    let named = quark(
        &cluster,
        &["promote", &a_id, "--alias", "french", "--by", "ops"],
    )
    .await;
    assert_eq!(stdout(&named), format!("french → {a} (Manual) by ops"));
    let unknown = Id::random().to_string();
    let missing = quark(&cluster, &["promote", &unknown]).await;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("the registry knows no model"));

    // The registry's timeline says who moved the champion and why.
    let now = Timestamp::now().0.to_string();
    let at: Value =
        serde_json::from_str(&stdout(&quark(&cluster, &["models", "--at", &now]).await)).unwrap();
    let champion = &at["champion"];
    assert_eq!(champion["model_id"], b_id.as_str(), "{at}");
    assert_eq!(
        (
            &champion["reason"],
            &champion["operator"],
            &champion["note"]
        ),
        (&"manual".into(), &"ops".into(), &"fixed in b2".into())
    );
    cluster.stop().await;
}
