//! Marks the build when `HERALD_TEST_DATABASE_URL` is set, so the tests that need PostgreSQL
//! run then and are reported as ignored otherwise (Rust decides `#[ignore]` when it compiles);
//! likewise `HERALD_TEST_PROMETHEUS_PYTHON` (a Python with PyPI `prometheus-client`) for the
//! test that checks `/metrics` with that reference parser.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(herald_postgres_tests)");
    println!("cargo::rerun-if-env-changed=HERALD_TEST_DATABASE_URL");
    if std::env::var_os("HERALD_TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=herald_postgres_tests");
    }
    println!("cargo::rustc-check-cfg=cfg(herald_prometheus_parser_tests)");
    println!("cargo::rerun-if-env-changed=HERALD_TEST_PROMETHEUS_PYTHON");
    if std::env::var_os("HERALD_TEST_PROMETHEUS_PYTHON").is_some_and(|path| !path.is_empty()) {
        println!("cargo::rustc-cfg=herald_prometheus_parser_tests");
    }
}
