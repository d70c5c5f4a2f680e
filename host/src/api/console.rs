//! The web console (`/ui`): one page of plain HTML, CSS and JavaScript
//! built into the binary (nothing fetched from elsewhere; the machine may
//! be offline). The page holds no data of its own: it calls the API with
//! the token the user gives it, like any other client, so every scope and
//! tenant rule holds in it. The assets are public; what they show is not.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const APP: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// What the browser may load and reach from the console: its own assets
/// and the API on the same origin, nothing else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes.
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/app.js", get(|| async { asset(APP, "text/javascript; charset=utf-8") }))
        .route("/ui/style.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    /// Every script and style the page loads is one of the console's own.
    #[test]
    fn the_page_loads_only_its_own_assets() {
        for found in super::INDEX.split("src=\"").skip(1).chain(super::INDEX.split("href=\"").skip(1)) {
            let target = found.split('"').next().unwrap();
            assert!(target.starts_with("/ui/") || target.starts_with('#') || target == "data:,", "{target}");
        }
        // (The SVG namespace is a name, not an address anything fetches.)
        let app = super::APP.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(!app.contains("http://") && !app.contains("https://"), "no address elsewhere");
    }
}
