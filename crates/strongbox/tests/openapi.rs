//! `/openapi.json` as standard tools read it: `openapi-spec-validator`
//! accepts the document, and `schemathesis` (every check) finds no request
//! the server answers differently from what the document says. Both are
//! PyPI packages, installed here on first use.

use std::process::Command;

use crate::common::*;

/// Installs the PyPI tools if this machine lacks them.
fn python_tools() {
    let have = Command::new("python3")
        .args(["-c", "import schemathesis, openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "schemathesis==4.*",
                "openapi-spec-validator",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "pip: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_openapi_document_is_valid_and_the_server_keeps_to_it() {
    python_tools();
    let dir = tempfile::tempdir().unwrap();
    // schemathesis sends hundreds of wrong credentials and expects 401 for
    // each; the throttle that would answer 429 has its own test (api.rs).
    let s = start_with(
        dir.path(),
        free_port(),
        &[("STRONGBOX_SIGNIN_FAILURES", "1000000".into())],
    );
    let (status, _, body) = s.curl(&[s.url("/openapi.json").as_str()]);
    assert_eq!(status, "HTTP/2 200");
    let spec: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Every DBCS route, each parameter with a schema, behind HTTP Basic.
    let paths = spec["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 11, "{:?}", paths.keys());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert_eq!(op["security"][0]["basicAuth"], serde_json::json!([]), "{method} {path}");
            for p in op["parameters"].as_array().unwrap() {
                assert!(p["schema"].is_object(), "{method} {path}: {p}");
            }
        }
    }
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The demo deployment's paths; registration fuzzes a deployment of its
    // own so that it cannot re-point the demo at a random file. One
    // expectation is widened, for two operations, where validity depends on
    // more than a schema can say: a well-formed recovery target that this
    // deployment cannot reach (before its first backup, between backups,
    // an scn of an engine without a WAL archive) is a 400, as the DBCS
    // answers it; so is a string that is no cron expression (field ranges,
    // step syntax); a drill asked for before the first backup is a 400 too.
    std::fs::write(
        dir.path().join("schemathesis.toml"),
        r#"
[parameters]
identityDomainId = "usexample"
serviceId = "db12c"

[[operations]]
include-path = "/strongbox/api/v1/instances/{identityDomainId}/{serviceId}"
parameters = { serviceId = "fuzzed" }

[[operations]]
include-path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/recovery"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

[[operations]]
include-path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/config"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

[[operations]]
include-path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/verify"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
"#,
    )
    .unwrap();
    let seed = seed(20261130);
    println!("schemathesis seed {seed} (MODEL_SEED replays it)");
    let out = Command::new("python3")
        .current_dir(dir.path())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(&file)
        .args(["--url", &s.url(""), "--checks", "all", "--max-examples", "25"])
        .args(["--auth", "serviceadmin:Pa55_word", "-H", "X-ID-TENANT-NAME: usexample"])
        .args(["--seed", &seed.to_string(), "--workers", "2", "--tls-verify"])
        .arg(dir.path().join("ca.pem"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
}
