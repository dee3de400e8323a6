//! TLS to PostgreSQL, with rustls: the `sslmode` and `sslrootcert` options of a database URL
//! and the connector every connection of the shared store uses (the pools, the notification
//! connection, `herald migrate` and `migrate-store`). tokio-postgres understands only `disable`, `prefer` and
//! `require` and verifies nothing itself, so these two options are taken out of the URL here
//! and turned into a certificate verifier, with libpq's meanings:
//!
//! - `disable`: plain TCP.
//! - `prefer` (the default): TLS when the server offers it, plain otherwise. A handshake that
//!   fails is an error, where libpq would try again in plain text.
//! - `require`: TLS or no connection.
//! - `verify-ca`: TLS, and the server's certificate chains to `sslrootcert`.
//! - `verify-full`: as `verify-ca`, and the certificate is for the host connected to.
//!
//! As in libpq, giving `sslrootcert` with `prefer` or `require` verifies the chain too.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How much a connection insists on TLS and what it checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode `{other}`: use disable, prefer, require, verify-ca or \
                     verify-full"
                ));
            }
        })
    }
}

/// The TLS options of a database URL, and the URL without them (for tokio-postgres).
#[derive(Debug, PartialEq, Eq)]
pub struct TlsOptions {
    pub rest: String,
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of the URL's query, leaving every other parameter
/// exactly as written.
pub fn split_url(url: &str) -> Result<TlsOptions, String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        match decode(key).as_str() {
            "sslmode" => mode = Some(SslMode::parse(&decode(value))?),
            "sslrootcert" => root_cert = Some(decode(value)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(TlsOptions {
        rest,
        mode: mode.unwrap_or(SslMode::Prefer),
        root_cert,
    })
}

impl TlsOptions {
    /// What tokio-postgres is told: whether to ask for TLS and whether to insist.
    pub fn wire_mode(&self) -> WireMode {
        match self.mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }

    /// The connector, with the root certificates read now: a missing or unusable file is an
    /// error at start-up, not at the first connection.
    pub fn connector(&self) -> Result<MakeRustls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.root_cert {
            Some(path) => Some(Arc::new(read_roots(path)?)),
            None if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(format!(
                    "sslmode={} needs sslrootcert: the file of the certificate authority that \
                     signed the server's certificate",
                    if self.mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                ));
            }
            None => None,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = match (self.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (_, roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, provider }))
                .with_no_client_auth(),
        };
        // What libpq sends too; servers from PostgreSQL 17 on check it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustls(Arc::new(config)))
    }
}

fn read_roots(path: &str) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {path} cannot be read: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert {path} is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {path} holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {path} holds no PEM certificate"));
    }
    Ok(roots)
}

/// Checks that the server's certificate chains to `roots` without looking at its names
/// (`verify-ca`), or, without roots, checks nothing of it (`prefer`, `require`). Either way
/// the handshake's signatures are checked, so the server holds the certificate's key.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres's hook for TLS, over tokio-rustls.
#[derive(Clone)]
pub struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            host: host.to_string(),
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    host: String,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{}` is not a host name TLS can verify", self.host),
                )
            })?;
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(stream))
        })
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM runs without channel binding (as with `channel_binding=prefer` in libpq when
        // the client offers none).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_options_leave_the_rest_of_the_url_as_written() {
        let split = split_url(
            "postgres://u:p%3Fw@db/herald?sslmode=verify-full&options=-c%20search_path%3Dx&sslrootcert=%2Fetc%2Fca%20file.pem",
        )
        .unwrap();
        assert_eq!(
            split,
            TlsOptions {
                rest: "postgres://u:p%3Fw@db/herald?options=-c%20search_path%3Dx".into(),
                mode: SslMode::VerifyFull,
                root_cert: Some("/etc/ca file.pem".into()),
            }
        );
        let plain = split_url("postgres://db/herald").unwrap();
        assert_eq!(plain.rest, "postgres://db/herald");
        assert_eq!(plain.mode, SslMode::Prefer, "libpq's default");
        assert_eq!(
            split_url("postgres://db/herald?sslmode=require")
                .unwrap()
                .rest,
            "postgres://db/herald"
        );
    }

    #[test]
    fn an_unknown_mode_is_named() {
        let err = split_url("postgres://db/herald?sslmode=verify").unwrap_err();
        assert!(err.contains("sslmode `verify`"), "{err}");
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let options = split_url(&format!("postgres://db/h?sslmode={mode}")).unwrap();
            let err = options.connector().err().unwrap();
            assert!(
                err.contains(&format!("sslmode={mode} needs sslrootcert")),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unreadable_or_empty_root_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let options = split_url(&format!(
            "postgres://db/h?sslmode=require&sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        let err = options.connector().err().unwrap();
        assert!(
            err.starts_with("sslrootcert ") && err.contains("cannot be read"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let options = split_url(&format!(
            "postgres://db/h?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ))
        .unwrap();
        let err = options.connector().err().unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
