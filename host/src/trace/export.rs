//! The HTTP client the OTLP exporter sends spans with: the host's own
//! reqwest, on a one-thread runtime of its own, so exporting works the
//! same from the exporter's thread, while the host stops, and in tests.

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use std::time::Duration;

/// The most of a collector's answer read back (an answer is a small
/// status message; what is past this is not read).
const MAX_ANSWER: usize = 64 << 10;

/// Sends each export as one request on its own runtime.
#[derive(Debug)]
pub(crate) struct OtlpClient {
    http: reqwest::Client,
    /// Shut down in the background on drop (it may be dropped on an async
    /// worker, where a blocking shutdown would panic).
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpClient {
    pub(crate) fn new(timeout: Duration) -> std::io::Result<Self> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(std::io::Error::other)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("taskhost-otlp")
            .enable_all()
            .build()?;
        Ok(Self { http, runtime: Some(runtime) })
    }
}

impl Drop for OtlpClient {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let Some(runtime) = &self.runtime else { return Err("the exporter is shut down".into()) };
        let sent = runtime.spawn(async move {
            let mut answer = http.execute(request).await?;
            let status = answer.status();
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await? {
                let room = MAX_ANSWER.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        Ok(Response::builder().status(status).body(Bytes::from(body))?)
    }
}
