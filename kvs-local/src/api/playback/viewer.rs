//! The viewer page served at `/`: static files compiled into the binary (viewer/index.html, viewer/app.js and
//! hls.js vendored from npm into viewer/vendor/). The page signs its API calls itself with keys the user enters.

use http::{Method, Response, StatusCode};

use super::hls::response;
use crate::body::ResponseBody;
use crate::error::ApiError;

const INDEX: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/viewer/index.html"));
const APP: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/viewer/app.js"));
const HLS_JS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/viewer/vendor/hls.min.js"
));

/// Whether a GET of this path is the viewer's.
pub fn is_viewer_path(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/" || path == "/index.html" || path.starts_with("/viewer/"))
}

pub fn serve(path: &str) -> Result<Response<ResponseBody>, ApiError> {
    let (body, content_type) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/viewer/app.js" => (APP, "text/javascript; charset=utf-8"),
        "/viewer/hls.min.js" => (HLS_JS, "text/javascript; charset=utf-8"),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!("the viewer has no file '{path}'"),
            ));
        }
    };
    Ok(response(body, content_type))
}
