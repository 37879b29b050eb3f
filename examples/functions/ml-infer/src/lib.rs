//! `ml-infer`: a small neural network embedded in the handler, scoring a feature vector at
//! the edge. `POST {"features": [numbers]}` answers `{"prediction": number}`.

mod model;

use handler_io::{BodyError, read_body, respond_error, respond_json};
use serde::Deserialize;
use serde_json::json;
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

wasip2::http::proxy::export!(MlInfer);

/// A feature vector is a few dozen bytes; anything far larger is not one.
const MAX_BODY: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    features: Vec<f64>,
}

struct MlInfer;

impl wasip2::exports::http::incoming_handler::Guest for MlInfer {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Post) {
            return respond_error(out, 405, "POST a JSON object {\"features\": [numbers]}");
        }
        let body = match read_body(&request, MAX_BODY) {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return respond_error(out, 413, "the body is too large"),
            Err(BodyError::Unreadable) => {
                return respond_error(out, 400, "the body could not be read");
            }
        };
        let input: Input = match serde_json::from_slice(&body) {
            Ok(input) => input,
            Err(error) => {
                let message = format!("expected {{\"features\": [numbers]}}: {error}");
                return respond_error(out, 400, &message);
            }
        };
        match model::predict(&input.features) {
            Ok(prediction) => respond_json(
                out,
                200,
                &json!({ "prediction": prediction, "model": model::NAME }),
            ),
            Err(message) => respond_error(out, 422, &message),
        }
    }
}
