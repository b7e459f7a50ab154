//! TLS to the database server as libpq reads `sslmode` and `sslrootcert`
//! (PostgreSQL's "SSL Support" chapter), for the two clients Strongbox
//! speaks itself: the WAL receiver (`replication`) and the sessions it
//! keeps (`Conn::client`). psql, pg_dump and pg_basebackup read the same
//! URL through libpq, so one URL means one thing to all of them:
//!
//! - `disable`: never;
//! - `allow`, `prefer` (the default): when the server offers it, its
//!   certificate unchecked (as libpq: against eavesdropping, not against
//!   a server in the middle);
//! - `require`: always; the certificate checked against `sslrootcert`
//!   when one is named (libpq: as `verify-ca` then), else not;
//! - `verify-ca`: always, the certificate signed by a CA of `sslrootcert`
//!   (libpq's default: `~/.postgresql/root.crt`);
//! - `verify-full`: that, and naming the host connected to.
//!
//! Over a Unix socket there is no TLS (libpq ignores `sslmode` there).
//! Client certificates (`sslcert`, `sslkey`) are refused in one sentence.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use postgres::config::{Host, SslMode};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Error;

/// What the URL asks of TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A URL's TLS: its mode, and how to connect when it is used.
pub(crate) struct Tls {
    pub mode: Mode,
    config: Arc<ClientConfig>,
}

impl Tls {
    /// Whether a server that does not offer TLS is refused.
    pub fn required(&self) -> bool {
        self.mode != Mode::Disable && self.mode != Mode::Prefer
    }

    /// For the `postgres` crate's sessions.
    pub fn connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tokio_postgres_rustls::MakeRustlsConnect::new((*self.config).clone())
    }

    /// Negotiates TLS on `tcp`, connected to `host`, once the server has
    /// agreed to it.
    pub fn handshake(&self, mut tcp: TcpStream, host: &str) -> Result<TlsSocket, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let mut session = ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        while session.is_handshaking() {
            session
                .complete_io(&mut tcp)
                .map_err(|e| format!("the TLS handshake with {host} failed: {e}"))?;
        }
        Ok(TlsSocket {
            tcp,
            session: Arc::new(Mutex::new(session)),
            raw: VecDeque::new(),
        })
    }
}

/// Reads `url` as libpq would: the `postgres` crate's configuration (TLS
/// settings it does not know taken out) and its TLS.
pub(crate) fn parse(url: &str) -> Result<(postgres::Config, Tls), Error> {
    let bad = |why: String| Error::Failed(format!("connection URL: {why}"));
    let mut u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for (key, value) in u.query_pairs() {
        match &*key {
            "sslmode" => mode = Some(value.into_owned()),
            "sslrootcert" => root = Some(PathBuf::from(&*value)),
            "sslcert" | "sslkey" => {
                return Err(bad(format!(
                    "{key}: Strongbox's own connections (the WAL receiver) do not present client certificates; \
                     authenticate with a password or SCRAM instead"
                )));
            }
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    u.set_query(None);
    if !kept.is_empty() {
        u.query_pairs_mut().extend_pairs(kept);
    }
    let mut config: postgres::Config = u.as_str().parse().map_err(|e| bad(format!("{e}")))?;
    let mut mode = match mode.as_deref() {
        None | Some("allow" | "prefer") => Mode::Prefer,
        Some("disable") => Mode::Disable,
        Some("require") => Mode::Require,
        Some("verify-ca") => Mode::VerifyCa,
        Some("verify-full") => Mode::VerifyFull,
        Some(other) => {
            return Err(bad(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    // As libpq: a CA file where it looks by default counts as named.
    let root = root.or_else(|| {
        let default = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
        (mode != Mode::Prefer && default.is_file()).then_some(default)
    });
    // Over a Unix socket libpq uses no TLS whatever sslmode says, and so
    // needs no CA either.
    if config.get_hosts().iter().all(|h| matches!(h, Host::Unix(_))) {
        mode = Mode::Disable;
    }
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let config_tls = client_config(mode, root.as_deref()).map_err(bad)?;
    Ok((
        config,
        Tls {
            mode,
            config: Arc::new(config_tls),
        },
    ))
}

fn client_config(mode: Mode, root: Option<&std::path::Path>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = match (mode, root) {
        (Mode::VerifyCa | Mode::VerifyFull, None) => {
            return Err(
                "sslmode=verify-ca and verify-full check the server's certificate against a CA: name its \
                 certificate file with sslrootcert=PATH (libpq would look in ~/.postgresql/root.crt)"
                    .into(),
            );
        }
        (Mode::Require | Mode::VerifyCa | Mode::VerifyFull, Some(path)) => Some(read_roots(path)?),
        _ => None,
    };
    let chain = match roots {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let mut config = match chain {
        Some(webpki) if mode == Mode::VerifyFull => builder.with_webpki_verifier(webpki).with_no_client_auth(),
        chain => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider }))
            .with_no_client_auth(),
    };
    // What libpq 17 sends; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The CA certificates of a PEM file. What is wrong with one is said
/// without quoting it: the path is the URL's, whatever file it names.
fn read_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let bad = || format!("sslrootcert {}: not a file of PEM certificates", path.display());
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => format!("sslrootcert {}: {e}", path.display()),
        _ => bad(),
    })?;
    for cert in certs {
        roots.add(cert.map_err(|_| bad())?).map_err(|_| bad())?;
    }
    if roots.is_empty() {
        return Err(bad());
    }
    Ok(roots)
}

/// What `prefer`, `require` and `verify-ca` check. With `chain`: that the
/// certificate chains to a CA of `sslrootcert`, whatever host it names
/// (webpki checks the name only after the chain, so its name error means
/// the chain held); without: nothing, as libpq. Either way the
/// handshake's signatures are checked, so the session's keys are the
/// certificate holder's.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One half of a TLS connection over blocking TCP: the receiver reads the
/// stream on one thread and reports on another, as over plain TCP. The
/// halves share the TLS session; a reader waits for the server's bytes
/// without holding it (only to decrypt them), so a report is never held
/// behind a read. A writer holds it while its bytes go out: status updates
/// are a few dozen bytes, which the socket's buffer takes at once.
pub(crate) struct TlsSocket {
    tcp: TcpStream,
    session: Arc<Mutex<ClientConnection>>,
    /// Read from the socket, not yet handed to the session (this half's;
    /// the session takes at most 4 KiB at a time, from the front).
    raw: VecDeque<u8>,
}

impl TlsSocket {
    pub fn try_clone(&self) -> io::Result<TlsSocket> {
        Ok(TlsSocket {
            tcp: self.tcp.try_clone()?,
            session: self.session.clone(),
            raw: VecDeque::new(),
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Read for TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut session = self.session.lock().expect("TLS session");
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Nothing decrypted: hand it what was read (all of it is
                // taken when nothing decrypted waits), then look again.
                if !self.raw.is_empty() {
                    session.read_tls(&mut self.raw)?;
                    session
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    while session.wants_write() {
                        session.write_tls(&mut &self.tcp)?;
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = (&self.tcp).read(&mut chunk)?;
            if n == 0 {
                // The server closed: the session says whether cleanly.
                let mut session = self.session.lock().expect("TLS session");
                session.read_tls(&mut io::empty())?;
                session
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return match session.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
            self.raw.extend(&chunk[..n]);
        }
    }
}

impl Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut session = self.session.lock().expect("TLS session");
        let n = session.writer().write(buf)?;
        while session.wants_write() {
            session.write_tls(&mut &self.tcp)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use strongbox_testkit::{Cluster, test_pki};

    use super::super::Conn;
    use super::super::pitr::Lsn;
    use super::super::replication::{Replication, Streamed};

    fn refused(url: &str) -> String {
        match Replication::connect(url, None, "strongbox_tls") {
            Ok(_) => panic!("{url}: connected"),
            Err(e) => e.to_string(),
        }
    }

    /// The receiver and the sessions Strongbox keeps, against a server
    /// that takes TLS only: each `sslmode` does what libpq's does (plain
    /// refused by the server; the wrong CA, a host the certificate does not
    /// name and no CA refused by the client, each in one sentence); WAL
    /// streamed over TLS is, byte for byte, the server's segment file, and
    /// the status reported over it is what the server shows.
    #[test]
    fn the_receiver_and_sessions_speak_tls_as_sslmode_says() {
        let c = Cluster::start("");
        let ca = c.only_tls();
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _, _) = test_pki(other.path());
        let url = |host: &str, query: String| format!("postgresql://postgres@{host}:{}/postgres?{query}", c.port);
        let verify = |mode: &str, ca: &PathBuf| format!("sslmode={mode}&sslrootcert={}", ca.display());

        let plain = refused(&url("127.0.0.1", "sslmode=disable".into()));
        assert!(plain.contains("no encryption"), "{plain}");
        let wrong_ca = refused(&url("localhost", verify("verify-full", &other_ca)));
        // (The two test CAs share a name: webpki finds the other one and
        // its signature fails, "BadSignature".)
        assert!(wrong_ca.contains("invalid peer certificate"), "{wrong_ca}");
        let misnamed = refused(&url("127.0.0.1", verify("verify-full", &ca)));
        assert!(misnamed.contains("not valid for name"), "{misnamed}");
        let no_ca = refused(&url("localhost", "sslmode=verify-full".into()));
        assert!(no_ca.contains("sslrootcert=PATH"), "{no_ca}");
        println!("refused: {plain}\n{wrong_ca}\n{misnamed}\n{no_ca}");
        for query in [verify("verify-ca", &ca), verify("require", &ca), String::new()] {
            let mut r = Replication::connect(&url("127.0.0.1", query.clone()), None, "strongbox_tls").unwrap();
            assert_eq!(r.identify_system().unwrap().timeline, 1, "{query}");
        }

        // Streamed over TLS from the start of a fresh segment to a switch.
        let slot = "strongbox_tls";
        c.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}', true)"));
        let full = url("localhost", verify("verify-full", &ca));
        let mut conn = Replication::connect(&full, None, slot).unwrap();
        let segment = 16u64 << 20;
        let from = c
            .psql("SELECT pg_switch_wal()")
            .parse::<Lsn>()
            .unwrap()
            .0
            .div_ceil(segment)
            * segment;
        let timeline = conn.identify_system().unwrap().timeline;
        let (mut stream, mut reporter) = conn.start(slot, from, timeline).unwrap();
        c.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS m FROM generate_series(1, 40000) g");
        let end = c.psql("SELECT pg_switch_wal()").parse::<Lsn>().unwrap().0;
        assert!(end > from + (1 << 20) && end < from + segment, "{from} {end}");
        let mut wal = Vec::new();
        while from + (wal.len() as u64) < end {
            if let Streamed::Wal { start, data } = stream.next().unwrap() {
                assert_eq!(start, from + wal.len() as u64, "contiguous");
                wal.extend_from_slice(&data);
            }
        }
        let file = c.psql(&format!("SELECT pg_walfile_name('{}')", Lsn(from + 1)));
        let on_disk = std::fs::read(c.data.join("pg_wal").join(&file)).unwrap();
        let n = (end - from) as usize;
        assert!(wal[..n] == on_disk[..n], "{file}: the streamed bytes differ");
        reporter.report(end, end).unwrap();
        let shown = format!("t|{}", Lsn(end));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = c.psql(&format!(
                "SELECT s.ssl, r.flush_lsn FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
                 WHERE r.application_name = '{slot}'"
            ));
            if seen == shown {
                break;
            }
            assert!(Instant::now() < deadline, "{seen}, not {shown}");
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "{} bytes of WAL streamed over TLS, as {file} holds them; flushed {shown}",
            n
        );

        // The sessions kept beside it.
        let session = |url: String| Conn::from_connection(&serde_json::json!({ "url": url }), "postgresql")?.client();
        let mut client = session(full).unwrap();
        let ssl: bool = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        assert!(ssl);
        let wrong = session(url("localhost", verify("verify-full", &other_ca)))
            .err()
            .unwrap();
        assert!(wrong.to_string().contains("invalid peer certificate"), "{wrong}");
        // Over the Unix socket no TLS, so no CA is needed (as libpq).
        let socket = format!(
            "postgresql:///postgres?user=postgres&host={}&port={}&sslmode=verify-full",
            c.data.display(),
            c.port
        );
        let mut client = session(socket).unwrap();
        let ssl: Option<bool> = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        assert_eq!(ssl, Some(false));

        // A server without TLS, where the URL requires it.
        std::fs::write(
            c.data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        c.psql("ALTER SYSTEM SET ssl = off");
        c.psql("SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let why = refused(&url("127.0.0.1", "sslmode=require".into()));
            if why.contains("does not accept TLS connections") {
                break;
            }
            assert!(Instant::now() < deadline, "{why}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
