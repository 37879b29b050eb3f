//! What every example handler needs: read a request body up to a limit, answer with JSON.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Unreadable,
}

/// The request's header `name`, if it holds one UTF-8 value.
pub fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    match values.as_slice() {
        [value] => String::from_utf8(value.clone()).ok(),
        _ => None,
    }
}

/// The whole request body, refused past `limit` bytes.
pub fn read_body(request: &IncomingRequest, limit: usize) -> Result<Vec<u8>, BodyError> {
    let body = request.consume().map_err(|()| BodyError::Unreadable)?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| BodyError::Unreadable)?;
        // Ask for everything that may come (one byte past the limit tells "at the limit"
        // from "over it"): a small body arrives in one call to the host.
        loop {
            let wanted = (limit + 1 - bytes.len()) as u64;
            match stream.blocking_read(wanted) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => return Err(BodyError::Unreadable),
            }
            if bytes.len() > limit {
                return Err(BodyError::TooLarge);
            }
        }
    }
    Ok(bytes)
}

/// Answers `status` with `value` as the JSON body.
pub fn respond_json(out: ResponseOutparam, status: u16, value: &serde_json::Value) {
    let body = value.to_string();
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"application/json".to_vec()),
        (
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        ),
    ])
    .expect("constant headers are valid");
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .expect("handlers only answer valid status codes");
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = outgoing.write().expect("a new body has a stream");
        // At most 4096 bytes per call, as WASI allows. The client may have gone; nothing is
        // left to tell it then.
        for chunk in body.as_bytes().chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Answers `status` with `{"error": message}`.
pub fn respond_error(out: ResponseOutparam, status: u16, message: &str) {
    respond_json(out, status, &serde_json::json!({ "error": message }));
}
