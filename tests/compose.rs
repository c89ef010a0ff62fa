//! `docker-compose.yml` as docker-compose reads it, and the Prometheus configuration it mounts
//! as promtool reads it: every Quark service runs in a container of its own beside Kafka, the
//! schema registry, PostgreSQL, the collector, Prometheus and kafka-ui, and Prometheus scrapes
//! each of them. (The images are not started here.)

use clap::ValueEnum;
use quark::services::Service;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/bootstrap installs it): {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of `config` under service `name` (up to the next service).
fn service_block(config: &str, name: &str) -> String {
    let header = format!("  {name}:");
    let inside = |l: &&str| l.starts_with("   ") || l.is_empty();
    let block: Vec<&str> = config
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(inside)
        .collect();
    block.join("\n") + "\n"
}

#[test]
fn the_compose_stack_runs_every_service_apart_and_prometheus_scrapes_each() {
    let services = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "--services"],
    );
    let services: Vec<&str> = services.lines().collect();
    let quark: Vec<String> = Service::value_variants()
        .iter()
        .map(|s| format!("quark-{}", s.to_possible_value().unwrap().get_name()))
        .collect();
    let infrastructure = [
        "kafka",
        "schema-registry",
        "postgres",
        "otel-collector",
        "prometheus",
        "kafka-ui",
        "quark-seed",
    ];
    for name in quark.iter().map(String::as_str).chain(infrastructure) {
        assert!(
            services.contains(&name),
            "{name} is not in docker-compose.yml: {services:?}"
        );
    }
    // Each service's own command and the metrics port Prometheus scrapes.
    let config = run("docker-compose", &["-f", "docker-compose.yml", "config"]);
    for (service, container) in Service::value_variants().iter().zip(&quark) {
        let name = service.to_possible_value().unwrap().get_name().to_string();
        let block = service_block(&config, container);
        assert!(
            block.contains(&format!("command:\n    - run\n    - {name}\n")),
            "{container}: {block}"
        );
        assert!(
            block.contains("QUARK__TELEMETRY__METRICS_LISTEN: 0.0.0.0:9464"),
            "{container}"
        );
    }
    run(
        "promtool",
        &["check", "config", "infra/prometheus/prometheus.yml"],
    );
    let scraped = std::fs::read_to_string(root().join("infra/prometheus/prometheus.yml")).unwrap();
    for container in &quark {
        assert!(
            scraped.contains(&format!("- {container}:9464")),
            "Prometheus does not scrape {container}"
        );
    }
}
