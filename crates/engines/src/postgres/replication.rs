//! A physical replication client: the part of PostgreSQL's streaming
//! replication protocol a WAL receiver needs (connect in `replication`
//! mode, `IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`, `START_REPLICATION SLOT …
//! PHYSICAL`, then WAL in and standby status updates out). The messages
//! come from `postgres-protocol`; the replication sub-protocol's own
//! framing (XLogData, keepalive, status update) is a few fixed layouts,
//! written here. It exists because the receiver must report its flush
//! position only once the WAL is in the repository (a synchronous
//! standby's commits then wait for the repository), which `pg_receivewal`
//! cannot: it reports once its own file is flushed.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres::config::Host;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend::Message, frontend};

use super::pitr::Lsn;
use super::tls::{self, Tls, TlsSocket};
use crate::Error;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may take while setting up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the stream may be silent: the server sends a keepalive every
/// half `wal_sender_timeout` (60 s by default) when it has no WAL to send,
/// so silence past this is a connection that died without a word.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(90);

/// A byte stream to the server: TCP, TLS over TCP, or its Unix socket.
enum Socket {
    Tcp(TcpStream),
    Tls(TlsSocket),
    Unix(UnixStream),
}

impl Socket {
    fn try_clone(&self) -> std::io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Tls(s) => Socket::Tls(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Socket::Tls(s) => s.tcp().set_read_timeout(Some(timeout)),
            Socket::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
            Socket::Tls(s) => s.tcp().shutdown(Shutdown::Both),
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Tls(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Tls(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Tls(s) => s.flush(),
            Socket::Unix(s) => s.flush(),
        }
    }
}

/// What the server streams, one message at a time.
pub(super) enum Streamed {
    /// WAL from `start` on.
    Wal { start: u64, data: bytes::Bytes },
    /// The server's keepalive; `reply`: it wants a status update now.
    Keepalive { reply: bool },
    /// The timeline being streamed ended (the server sends what follows
    /// on the next one only when asked again).
    TimelineEnded,
}

/// What `IDENTIFY_SYSTEM` answers.
pub(super) struct System {
    pub timeline: u32,
    pub position: u64,
}

/// A connection in physical replication mode.
pub(super) struct Replication {
    reader: BufReader<Socket>,
    writer: Socket,
}

/// The other half of a connection: standby status updates, from another
/// thread than the one reading the stream.
pub(super) struct Reporter(Socket);

impl Replication {
    /// Connects to the server `url` names, as `application_name` (what
    /// `synchronous_standby_names` lists), with `password` if it asks;
    /// over TLS as the URL's `sslmode` says (`tls`).
    pub fn connect(url: &str, password: Option<&str>, application_name: &str) -> Result<Self, Error> {
        let failed = |why: String| Error::Failed(format!("could not connect to the database server ({why})"));
        let (config, tls) = tls::parse(url)?;
        let (socket, host) = open(&config).map_err(failed)?;
        socket
            .set_read_timeout(ANSWER_TIMEOUT)
            .map_err(|e| failed(e.to_string()))?;
        let socket = match (socket, host) {
            (Socket::Tcp(tcp), Some(host)) if tls.mode != tls::Mode::Disable => {
                negotiate(tcp, &host, &tls).map_err(failed)?
            }
            (socket, _) => socket,
        };
        let mut conn = Replication {
            reader: BufReader::with_capacity(1 << 16, socket.try_clone().map_err(|e| failed(e.to_string()))?),
            writer: socket,
        };
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user.as_str()),
                ("replication", "true"),
                ("application_name", application_name),
            ],
            &mut buf,
        )
        .map_err(|e| failed(e.to_string()))?;
        conn.send(&buf)?;
        conn.authenticate(
            &user,
            password.or(config.get_password().and_then(|p| std::str::from_utf8(p).ok())),
        )
        .map_err(|e| failed(e.to_string()))?;
        Ok(conn)
    }

    fn authenticate(&mut self, user: &str, password: Option<&str>) -> Result<(), Error> {
        let needs = || Error::Failed("the server asks for a password and the URL has none".into());
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let mut buf = BytesMut::new();
            match self.message()? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password.ok_or_else(needs)?.as_bytes(), &mut buf).map_err(protocol)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password.ok_or_else(needs)?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut buf).map_err(protocol)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next().map_err(protocol)? {
                        offered |= m == sasl::SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(Error::Failed(
                            "the server offers no SASL mechanism the receiver knows".into(),
                        ));
                    }
                    let s = sasl::ScramSha256::new(
                        password.ok_or_else(needs)?.as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut buf).map_err(protocol)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Failed("SASL out of order".into()))?;
                    s.update(body.data()).map_err(protocol)?;
                    frontend::sasl_response(s.message(), &mut buf).map_err(protocol)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    scram
                        .as_mut()
                        .ok_or_else(|| Error::Failed("SASL out of order".into()))?
                        .finish(body.data())
                        .map_err(protocol)?;
                }
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationSspi => {
                    return Err(Error::Failed(
                        "the server asks for GSSAPI, SSPI or Kerberos authentication, which the receiver does not \
                         speak: allow it trust, a password or SCRAM in pg_hba.conf"
                            .into(),
                    ));
                }
                // Parameters, the cancel key, notices.
                _ => {}
            }
            if !buf.is_empty() {
                self.send(&buf)?;
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: the server's timeline and where its WAL is.
    pub fn identify_system(&mut self) -> Result<System, Error> {
        let rows = self.simple("IDENTIFY_SYSTEM")?;
        let field = |i: usize| {
            rows.first()
                .and_then(|r| r.get(i))
                .cloned()
                .flatten()
                .unwrap_or_default()
        };
        Ok(System {
            timeline: field(1)
                .parse()
                .map_err(|_| Error::Failed(format!("IDENTIFY_SYSTEM: timeline {:?}", field(1))))?,
            position: field(2).parse::<Lsn>().map_err(Error::Failed)?.0,
        })
    }

    /// `TIMELINE_HISTORY`: the history file of `timeline` (name, content).
    pub fn timeline_history(&mut self, timeline: u32) -> Result<(String, Vec<u8>), Error> {
        let rows = self.simple(&format!("TIMELINE_HISTORY {timeline}"))?;
        match rows
            .into_iter()
            .next()
            .map(|r| r.into_iter().collect::<Vec<_>>())
            .as_deref()
        {
            Some([Some(name), Some(content)]) => Ok((name.clone(), content.clone().into_bytes())),
            _ => Err(Error::Failed(format!("TIMELINE_HISTORY {timeline}: no file"))),
        }
    }

    /// `START_REPLICATION SLOT slot PHYSICAL at TIMELINE timeline`: from
    /// here on the server streams; returns the halves that read the stream
    /// and that report to it.
    pub fn start(mut self, slot: &str, at: u64, timeline: u32) -> Result<(Replication, Reporter), Error> {
        let mut buf = BytesMut::new();
        let sql = format!("START_REPLICATION SLOT {slot} PHYSICAL {} TIMELINE {timeline}", Lsn(at));
        frontend::query(&sql, &mut buf).map_err(protocol)?;
        self.send(&buf)?;
        loop {
            let (tag, body) = self.frame()?;
            match tag {
                b'W' => {
                    self.writer.set_read_timeout(SILENCE_TIMEOUT).map_err(lost)?;
                    break;
                }
                b'E' | b'N' | b'S' => {
                    if let Message::ErrorResponse(body) = parse(tag, body)? {
                        return Err(Error::Failed(format!("{sql}: {}", server_error(&body))));
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        let reporter = Reporter(self.writer.try_clone().map_err(|e| Error::Failed(e.to_string()))?);
        Ok((self, reporter))
    }

    /// Whether what was read already holds (the start of) another message:
    /// `next` returns it without waiting for the server.
    pub fn pending(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// The next message of the stream.
    pub fn next(&mut self) -> Result<Streamed, Error> {
        loop {
            let (tag, body) = self.frame()?;
            match tag {
                b'd' => {
                    let mut body = bytes::Bytes::from(body);
                    let short = || Error::Failed("a replication message ended early".into());
                    match body.first() {
                        Some(b'w') if body.len() >= 25 => {
                            body.advance(1);
                            let start = body.get_u64();
                            body.advance(16); // the server's end of WAL and send time
                            return Ok(Streamed::Wal { start, data: body });
                        }
                        Some(b'k') if body.len() >= 18 => return Ok(Streamed::Keepalive { reply: body[17] != 0 }),
                        Some(b'w' | b'k') => return Err(short()),
                        _ => return Err(Error::Failed("an unknown replication message".into())),
                    }
                }
                b'c' => return Ok(Streamed::TimelineEnded),
                b'N' | b'S' => {}
                b'E' => {
                    if let Message::ErrorResponse(body) = parse(tag, body)? {
                        return Err(server_error(&body));
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// A query the replication mode takes; its rows, as text.
    fn simple(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(protocol)?;
        self.send(&buf)?;
        let (mut rows, mut error) = (Vec::new(), None);
        loop {
            match self.message()? {
                Message::DataRow(row) => {
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = ranges.next().map_err(protocol)? {
                        values.push(range.map(|r| String::from_utf8_lossy(&row.buffer()[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Message::ErrorResponse(body) => error = Some(server_error(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(Error::Failed(format!("{sql}: {e}"))),
            None => Ok(rows),
        }
    }

    fn send(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.writer.write_all(buf).map_err(lost)
    }

    /// One message's tag and body.
    fn frame(&mut self) -> Result<(u8, Vec<u8>), Error> {
        let mut header = [0u8; 5];
        self.reader.read_exact(&mut header).map_err(lost)?;
        let len = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.reader.read_exact(&mut body).map_err(lost)?;
        Ok((header[0], body))
    }

    fn message(&mut self) -> Result<Message, Error> {
        let (tag, body) = self.frame()?;
        parse(tag, body)
    }
}

impl Reporter {
    /// A standby status update: WAL received up to `written`, and (what a
    /// synchronous standby's commits wait for) flushed up to `flushed`:
    /// for this receiver, stored in the repository.
    pub fn report(&mut self, written: u64, flushed: u64) -> Result<(), Error> {
        // Microseconds since 2000-01-01, PostgreSQL's epoch.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64 - 946_684_800_000_000);
        let mut update = BytesMut::with_capacity(34);
        update.put_u8(b'r');
        update.put_u64(written);
        update.put_u64(flushed);
        update.put_u64(0); // applied: nothing is replayed here
        update.put_i64(now);
        update.put_u8(0);
        let mut buf = BytesMut::new();
        frontend::CopyData::new(update.freeze())
            .map_err(protocol)?
            .write(&mut buf);
        self.0.write_all(&buf).map_err(lost)
    }

    /// Ends the connection: the reading half sees it closed.
    pub fn close(&self) {
        self.0.shutdown();
    }
}

/// Asks the server for TLS on a new TCP connection (`SSLRequest`) and
/// negotiates it if the server agrees; a server that declines is refused
/// when the URL requires TLS.
fn negotiate(mut tcp: TcpStream, host: &str, tls: &Tls) -> Result<Socket, String> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).map_err(|e| e.to_string())?;
    match answer[0] {
        b'S' => tls.handshake(tcp, host).map(Socket::Tls),
        b'N' if tls.required() => Err(format!(
            "{host} does not accept TLS connections (ssl = off in its postgresql.conf) and the URL's sslmode \
             requires TLS"
        )),
        b'N' => Ok(Socket::Tcp(tcp)),
        other => Err(format!("{host} answered the request for TLS with {:?}", other as char)),
    }
}

/// Opens a connection to the first of the configured hosts that answers;
/// the host's name if it is reached by TCP.
fn open(config: &postgres::Config) -> Result<(Socket, Option<String>), String> {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<Host> = match config.get_hosts() {
        [] => vec![Host::Unix("/var/run/postgresql".into())],
        hosts => hosts.to_vec(),
    };
    let mut last = String::from("no host");
    for (i, host) in hosts.iter().enumerate() {
        let opened = match host {
            // Each of its addresses, as libpq (`localhost` may be ::1
            // first, and the server listen on 127.0.0.1 only).
            Host::Tcp(name) => (name.as_str(), port(i))
                .to_socket_addrs()
                .and_then(|addrs| {
                    let mut last = std::io::Error::other(format!("{name}: no address"));
                    for addr in addrs {
                        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                            Ok(s) => return Ok(s),
                            Err(e) => last = e,
                        }
                    }
                    Err(last)
                })
                .and_then(|s| {
                    // Status updates are small and a synchronous commit
                    // waits for each: no Nagle delay.
                    s.set_nodelay(true)?;
                    Ok((Socket::Tcp(s), Some(name.clone())))
                }),
            Host::Unix(dir) => UnixStream::connect(Path::new(dir).join(format!(".s.PGSQL.{}", port(i))))
                .map(|s| (Socket::Unix(s), None)),
        };
        match opened {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{host:?}: {e}"),
        }
    }
    Err(last)
}

fn parse(tag: u8, body: Vec<u8>) -> Result<Message, Error> {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(tag);
    buf.put_u32(body.len() as u32 + 4);
    buf.put_slice(&body);
    Message::parse(&mut buf)
        .map_err(protocol)?
        .ok_or_else(|| Error::Failed("a message ended early".into()))
}

fn server_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> Error {
    let mut fields = body.fields();
    let mut message = String::from("the server refused");
    while let Ok(Some(f)) = fields.next() {
        if f.type_() == b'M' {
            message = String::from_utf8_lossy(f.value_bytes()).into_owned();
        }
    }
    Error::Failed(message)
}

fn unexpected(tag: u8) -> Error {
    Error::Failed(format!("the server sent an unexpected message ({:?})", tag as char))
}

fn protocol(e: std::io::Error) -> Error {
    Error::Failed(format!("the replication protocol: {e}"))
}

fn lost(e: std::io::Error) -> Error {
    Error::Failed(format!("the replication connection was lost ({e})"))
}
