//! The API server as a real process over real TLS (a test CA), driven by
//! real curl: the seed's request end to end, then the error cases.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, and a certificate for localhost signed by it.
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf whose issuer equals its subject looks self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Strongbox test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = test_pki(dir.path());
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["serve", "--demo"])
        .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
        .env("STRONGBOX_LISTEN", format!("127.0.0.1:{port}"))
        .env("STRONGBOX_TLS_CERT", cert)
        .env("STRONGBOX_TLS_KEY", key)
        .env("STRONGBOX_PUBLIC_URL", format!("https://localhost:{port}"))
        .env("STRONGBOX_DEMO_PASSWORD", "Pa55_word")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, dir, port }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// curl with the test CA (the seed's `--cacert`), plus `args`; returns
    /// (status line, lower-cased headers, body).
    fn curl(&self, args: &[&str]) -> (String, Vec<(String, String)>, String) {
        let ca = self.dir.path().join("ca.pem");
        let out = Command::new("curl")
            .args(["-sS", "-i", "--cacert"])
            .arg(&ca)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.is_empty(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default().trim().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
}

const BACKUPS: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups";

#[test]
fn the_seed_request_backs_up_a_real_database() {
    let s = start();
    // The seed's curl command, word for word but for host and CA file.
    let (status, h, body) = s.curl(&[
        "-X",
        "POST",
        "-u",
        "serviceadmin:Pa55_word",
        "-H",
        "X-ID-TENANT-NAME:usexample",
        "-H",
        "Content-Type:application/json",
        "-d",
        "{ }",
        &s.url(BACKUPS),
    ]);
    assert_eq!(status, "HTTP/2 202", "{h:?} {body}");
    assert_eq!(body, "");
    let location = header(&h, "location").to_string();
    let prefix = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/status/backup/job/");
    assert!(
        location.starts_with(&prefix) && location[prefix.len()..].parse::<u64>().is_ok(),
        "{location}"
    );
    assert_eq!(
        header(&h, "service-uri"),
        s.url("/paas/service/dbcs/api/v1.1/instances/usexample/db12c")
    );
    assert_eq!(header(&h, "retry-after"), "60");
    assert_eq!(header(&h, "content-type"), "application/json");
    assert_eq!(header(&h, "content-language"), "en");
    assert_eq!(header(&h, "vary"), "user-agent");
    assert_eq!(
        header(&h, "strict-transport-security"),
        "max-age=31536000;includeSubDomains"
    );
    assert_eq!(header(&h, "access-control-allow-origin"), "*");
    assert_eq!(
        header(&h, "access-control-allow-headers"),
        "Content-Type, api_key, Authorization, X-ID-TENANT-NAME, X-USER-IDENTITY-DOMAIN-NAME"
    );
    assert_eq!(
        header(&h, "access-control-allow-methods"),
        "GET, POST, DELETE, PUT, OPTIONS, HEAD"
    );
    assert_eq!(header(&h, "x-frame-options"), "DENY");
    let ecid = header(&h, "x-oracle-dms-ecid").to_string();
    assert!(ecid.len() >= 16);

    // Poll the job to Succeeded.
    let auth = [
        "-u",
        "serviceadmin:Pa55_word",
        "-H",
        "X-ID-TENANT-NAME:usexample",
        "-H",
        "Content-Type:application/json",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let (status, h, body) = s.curl(&[&auth[..], &[location.as_str()]].concat());
        assert_eq!(status, "HTTP/2 200", "{body}");
        assert_ne!(
            header(&h, "x-oracle-dms-ecid"),
            ecid,
            "a new correlation id per request"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        match v["job_status"].as_str().unwrap() {
            "Succeeded" => break v,
            "In Progress" => {}
            other => panic!("job {other}: {v}"),
        }
        assert!(Instant::now() < deadline, "job did not finish: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job["job_operation"], "backup");
    assert_eq!(job["identity_domain"], "usexample");
    assert_eq!(job["created_by"], "serviceadmin");
    assert!(job["progress"]["bytes_done"].as_u64().unwrap() > 100_000, "{job}");

    let (status, _, body) = s.curl(&[&auth[..], &[s.url(BACKUPS).as_str()]].concat());
    assert_eq!(status, "HTTP/2 200");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let b = &v["backupList"][0];
    assert_eq!(b["status"], "COMPLETED", "{v}");
    assert!(b["dbTag"].as_str().unwrap().starts_with("TAG"));
    assert!(b["backupCompleteDate"].as_str().unwrap().ends_with(" UTC"));
    assert_eq!(b["backupCompleteDate"], b["backupCompletedDate"]);

    // The activity log sees the same job.
    let id = location.rsplit('/').next().unwrap();
    let (status, _, body) = s.curl(
        &[
            &auth[..],
            &[s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))
                .as_str()],
        ]
        .concat(),
    );
    assert_eq!(status, "HTTP/2 200");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["operationType"].as_str()),
        (Some("SUCCEED"), Some("BACKUP"))
    );
}

#[test]
fn mistakes_get_4xx_with_a_message() {
    let s = start();
    let url = s.url(BACKUPS);
    let good = ["-u", "serviceadmin:Pa55_word", "-H", "X-ID-TENANT-NAME:usexample"];
    let json = ["-H", "Content-Type: application/json"];
    let idcs_url = s.url("/paas/service/dbcs/api/v1.1/instances/idcs-4f2a/db12c/backups");
    let big = "x".repeat(70_000);
    let nosuch = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/nosuch/backups");
    let no_job = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/status/backup/job/999");
    let no_route = s.url("/no/such/route");
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec![
                "-X",
                "POST",
                "-H",
                "X-ID-TENANT-NAME:usexample",
                "-d",
                "{}",
                "-H",
                json[1],
                &url,
            ],
            "401",
            "credentials",
        ),
        (
            vec![
                "-X",
                "POST",
                "-u",
                "serviceadmin:wrong",
                "-H",
                "X-ID-TENANT-NAME:usexample",
                "-H",
                json[1],
                "-d",
                "{}",
                &url,
            ],
            "401",
            "password",
        ),
        (
            vec![
                "-X",
                "POST",
                "-u",
                "serviceadmin:Pa55_word",
                "-H",
                "X-ID-TENANT-NAME:other",
                "-H",
                json[1],
                "-d",
                "{}",
                &url,
            ],
            "403",
            "X-ID-TENANT-NAME",
        ),
        (
            vec![
                "-X",
                "POST",
                "-u",
                "serviceadmin:Pa55_word",
                "-H",
                "X-ID-TENANT-NAME:idcs-4f2a",
                "-H",
                json[1],
                "-d",
                "{}",
                &idcs_url,
            ],
            "403",
            "does not belong",
        ),
        (
            [
                &good[..],
                &["-X", "POST", "-H", json[1], "-d", "{\"keepForever\": tru", &url],
            ]
            .concat(),
            "400",
            "malformed JSON",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", "[1]", &url]].concat(),
            "400",
            "JSON object",
        ),
        (
            [
                &good[..],
                &["-X", "POST", "-H", json[1], "-d", "{\"keepForever\": \"yes\"}", &url],
            ]
            .concat(),
            "400",
            "keepForever",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", "{\"tag\": 1}", &url]].concat(),
            "400",
            "unknown field",
        ),
        (
            [
                &good[..],
                &["-X", "POST", "-H", "Content-Type: text/plain", "-d", "{}", &url],
            ]
            .concat(),
            "415",
            "application/json",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", &big, &url]].concat(),
            "413",
            "exceeds",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", "{}", &nosuch]].concat(),
            "404",
            "nosuch",
        ),
        ([&good[..], &[no_job.as_str()]].concat(), "404", "999"),
        ([&good[..], &[no_route.as_str()]].concat(), "404", "no such resource"),
        ([&good[..], &["-X", "DELETE", &url]].concat(), "405", "not allowed"),
    ];
    for (args, code, needle) in cases {
        let (status, h, body) = s.curl(&args);
        assert_eq!(status, format!("HTTP/2 {code}"), "{args:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{args:?}: not JSON: {body}"));
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{args:?}: {msg}");
        if code == "401" {
            assert!(header(&h, "www-authenticate").starts_with("Basic"));
        }
    }
    // CORS preflight, without credentials.
    let (status, h, _) = s.curl(&["-X", "OPTIONS", &url]);
    assert_eq!(status, "HTTP/2 200");
    assert_eq!(header(&h, "access-control-allow-origin"), "*");
}
