//! One probe of one member: https (TLS verified against the target hostname), http, tcp.
//!
//! Probes run on the async runtime, bounded by the probe timeout, and report what they saw;
//! they never change health state themselves (that is `health::MemberHealth::observe`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::spec::{ProbeKind, ProbeSpec};
use crate::sync::lock;
use crate::zone::name::Name;

/// Most of a response body read to look for `body-contains`.
const MAX_BODY: usize = 64 * 1024;

/// What one probe saw.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub ok: bool,
    /// Short human-readable reason ("200 OK", "status 500", "timeout after 1s"...).
    pub detail: String,
    pub latency: Duration,
    /// The leaf certificate of an https probe that completed its handshake.
    pub certificate: Option<Arc<[u8]>>,
}

/// What identifies one version of a CA file: a replaced or rewritten file is read again.
type FileVersion = Option<(u64, u64, i64, i64)>;

/// TLS client configurations, one per extra CA file, built again when the file changes (a CA
/// rotation takes effect at the next probe, reload or not).
#[derive(Debug, Default)]
pub struct TlsConfigs {
    by_ca_file: Mutex<HashMap<Option<PathBuf>, BuiltFor>>,
}

/// A TLS configuration and the CA file version it was built from.
type BuiltFor = (FileVersion, Arc<ClientConfig>);

impl TlsConfigs {
    fn get(&self, ca_file: Option<&PathBuf>) -> Result<Arc<ClientConfig>, String> {
        let version = ca_file.and_then(|path| {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec()))
        });
        let mut map = lock(&self.by_ca_file);
        if let Some((seen, config)) = map.get(&ca_file.cloned()) {
            if *seen == version {
                return Ok(config.clone());
            }
        }
        let config = Arc::new(client_config(ca_file)?);
        map.insert(ca_file.cloned(), (version, config.clone()));
        Ok(config)
    }
}

/// A TLS failure as a sentence (rustls's errors read as Rust debug text).
fn tls_failure(error: &std::io::Error, host: &str) -> String {
    let inner = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(certificate)) = inner else {
        return format!("TLS: {error}");
    };
    let why = match certificate {
        CertificateError::UnknownIssuer => {
            "is not signed by a trusted CA (check the member's ca-file)".to_string()
        }
        // webpki's reasons come wrapped, as `Other(OtherError(CaUsedAsEndEntity))`.
        CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "is a CA certificate, not a server's own".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("does not cover {host}")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "has expired".to_string(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "is not valid yet".to_string()
        }
        CertificateError::Revoked => "is revoked".to_string(),
        CertificateError::BadSignature => "has a bad signature".to_string(),
        other => format!("was refused ({other:?})"),
    };
    format!("TLS: the server's certificate {why}")
}

fn client_config(ca_file: Option<&PathBuf>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS verifier: {e}"))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpiryTolerantVerifier { inner }))
        .with_no_client_auth();
    Ok(config)
}

/// Full WebPKI verification, except that an expired but otherwise valid certificate passes:
/// expiry is reported per pool (policy `strict` makes the member ineligible), so the probe
/// must still see the certificate.
#[derive(Debug)]
struct ExpiryTolerantVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ExpiryTolerantVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after, ..
            })) => {
                let last_valid =
                    UnixTime::since_unix_epoch(Duration::from_secs(not_after.as_secs().saturating_sub(1)));
                self.inner.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    last_valid,
                )
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Runs one probe of `target` per `spec`, bounded by `spec.timeout`.
pub async fn run(spec: &ProbeSpec, target: &Name, tls: &TlsConfigs) -> ProbeResult {
    let started = Instant::now();
    let host = target.to_string().trim_end_matches('.').to_string();
    let outcome = tokio::time::timeout(spec.timeout, probe_inner(spec, &host, tls)).await;
    let latency = started.elapsed();
    match outcome {
        Ok(Ok((detail, certificate))) => ProbeResult {
            ok: true,
            detail,
            latency,
            certificate,
        },
        Ok(Err((detail, certificate))) => ProbeResult {
            ok: false,
            detail,
            latency,
            certificate,
        },
        Err(_) => ProbeResult {
            ok: false,
            detail: format!("timeout after {}", crate::duration::format(spec.timeout)),
            latency,
            certificate: None,
        },
    }
}

type Seen = (String, Option<Arc<[u8]>>);

async fn probe_inner(spec: &ProbeSpec, host: &str, tls: &TlsConfigs) -> Result<Seen, Seen> {
    let fail = |detail: String| (detail, None);
    if spec.kind == ProbeKind::None {
        return Ok(("no probe configured".into(), None));
    }
    let addr = resolve(spec, host).await.map_err(fail)?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| fail(format!("connect {addr}: {e}")))?;
    match spec.kind {
        ProbeKind::Tcp | ProbeKind::None => Ok((format!("connected to {addr}"), None)),
        ProbeKind::Http => http_get(stream, spec, host)
            .await
            .map(|d| (d, None))
            .map_err(fail),
        ProbeKind::Https => {
            let config = tls.get(spec.ca_file.as_ref()).map_err(fail)?;
            let server_name =
                ServerName::try_from(host.to_string()).map_err(|e| fail(format!("bad SNI {host}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls_stream = connector
                .connect(server_name, stream)
                .await
                .map_err(|e| fail(tls_failure(&e, host)))?;
            let certificate: Option<Arc<[u8]>> = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| Arc::from(leaf.as_ref()));
            match http_get(tls_stream, spec, host).await {
                Ok(detail) => Ok((detail, certificate)),
                Err(detail) => Err((detail, certificate)),
            }
        }
    }
}

async fn resolve(spec: &ProbeSpec, host: &str) -> Result<SocketAddr, String> {
    if let Some(addr) = spec.address {
        return Ok(addr);
    }
    resolve_within(host, spec.port, spec.timeout, system_lookup).await
}

/// Name lookups (the system resolver's `getaddrinfo`, which blocks) in flight at most. Each
/// holds a thread of the runtime's blocking pool until the resolver answers, however long:
/// a hung resolver would otherwise fill the pool with probes' lookups, and zone transfers
/// and reloads, which need it too, would wait behind them.
const LOOKUP_BUDGET: usize = 8;

fn lookup_slots() -> &'static Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(LOOKUP_BUDGET)))
}

fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok((host, port).to_socket_addrs()?.collect())
}

/// `host`'s first address by `lookup`, run on the blocking pool within the lookup budget and
/// given up after `wait` (the lookup itself then ends when the resolver lets it, still
/// holding its slot).
async fn resolve_within(
    host: &str,
    port: u16,
    wait: Duration,
    lookup: fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<SocketAddr, String> {
    let deadline = tokio::time::Instant::now() + wait;
    let slot = match tokio::time::timeout_at(deadline, lookup_slots().clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => {
            return Err(format!(
                "resolve {host}: {LOOKUP_BUDGET} lookups already waiting on the resolver"
            ));
        }
    };
    let name = host.to_string();
    let lookup = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        lookup(&name, port)
    });
    match tokio::time::timeout_at(deadline, lookup).await {
        Ok(Ok(Ok(addresses))) => match addresses.into_iter().next() {
            // A member's name that leads to this host's own services (loopback, or the
            // unspecified address) is not probed: the name is the member operator's to set,
            // a probe of a local service is the consortium operator's, by `address`.
            Some(addr) if addr.ip().is_loopback() || addr.ip().is_unspecified() => Err(format!(
                "resolve {host}: {} is this host itself; not probed (set the member's probe `address` to probe a local service on purpose)",
                addr.ip()
            )),
            Some(addr) => Ok(addr),
            None => Err(format!("resolve {host}: no address")),
        },
        Ok(Ok(Err(e))) => Err(format!("resolve {host}: {e}")),
        Ok(Err(_)) => Err(format!("resolve {host}: lookup failed")),
        Err(_) => Err(format!("resolve {host}: no answer from the resolver in time")),
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`; checks status and body.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    spec: &ProbeSpec,
    host: &str,
) -> Result<String, String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: consortium-dns-health/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        spec.path,
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;
    let mut response = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // Servers that close without TLS close_notify are common; keep what arrived.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) if response.is_empty() => return Err(format!("read response: {e}")),
            Err(_) => 0,
        };
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
        if response.len() >= MAX_BODY {
            break;
        }
        // Without a body check, the status line is enough.
        if spec.body_contains.is_none() && response.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let status = parse_status_line(&response).ok_or_else(|| "no HTTP status line in response".to_string())?;
    if status < spec.expect_status.0 || status > spec.expect_status.1 {
        return Err(format!("status {status}"));
    }
    if let Some(needle) = &spec.body_contains {
        let body_start = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |p| p + 4);
        let found = response[body_start..]
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes());
        if !found {
            return Err(format!("status {status}, body lacks {needle:?}"));
        }
    }
    Ok(format!("status {status}"))
}

fn parse_status_line(response: &[u8]) -> Option<u16> {
    let line_end = response.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    /// A resolver that does not answer (in this test: for 1 s, thrice the probes' patience).
    fn hung_lookup(_: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_secs(1));
        Err(std::io::Error::other("late"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_resolver_holds_at_most_the_lookup_budget_of_blocking_threads() {
        let probes: Vec<_> = (0..600)
            .map(|i| {
                tokio::spawn(async move {
                    resolve_within(
                        &format!("m{i}.example"),
                        443,
                        Duration::from_millis(300),
                        hung_lookup,
                    )
                    .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Other blocking work (a transfer, a reload) runs at once meanwhile.
        let started = Instant::now();
        let other = tokio::task::spawn_blocking(|| 42).await.expect("blocking task");
        assert_eq!(other, 42);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        for probe in probes {
            let outcome = probe.await.expect("probe task");
            let reason = outcome.expect_err("a hung resolver resolves nothing");
            assert!(
                reason.contains("no answer from the resolver in time")
                    || reason.contains("lookups already waiting"),
                "{reason}"
            );
        }
        // Once the hung lookups end, their slots serve again (here the real resolver, on a
        // literal); a name leading to this host itself is refused.
        let addr = resolve_within("192.0.2.7", 53, Duration::from_secs(3), system_lookup).await;
        assert_eq!(addr, Ok("192.0.2.7:53".parse().expect("addr")));
        for local in ["127.0.0.1", "::1", "0.0.0.0", "localhost"] {
            let refused = resolve_within(local, 53, Duration::from_secs(3), system_lookup).await;
            assert!(
                refused.as_ref().is_err_and(|e| e.contains("is this host itself")),
                "{local}: {refused:?}"
            );
        }
    }

    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500 Oops\r\n"), Some(500));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200"), None);
    }
}
