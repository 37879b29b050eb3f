//! `whoami`: answers who the caller is, from the identity the node verified. The node checks
//! the bearer token before the function runs and hands it the token's claims as JSON in the
//! `edgepack-identity` header (a header a client sends under that name never reaches here).

use handler_io::{header, respond_error, respond_json};
use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wasip2::http::proxy::export!(WhoAmI);

struct WhoAmI;

impl wasip2::exports::http::incoming_handler::Guest for WhoAmI {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some(identity) = header(&request, "edgepack-identity") else {
            return respond_error(out, 401, "no verified identity: the route needs `auth`");
        };
        let claims: Value = match serde_json::from_str(&identity) {
            Ok(Value::Object(claims)) => Value::Object(claims),
            _ => return respond_error(out, 500, "the identity is not a JSON object"),
        };
        let scopes: Vec<&str> = claims["scope"]
            .as_str()
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        respond_json(
            out,
            200,
            &json!({
                "subject": claims["sub"],
                "issuer": claims["iss"],
                "scopes": scopes,
                "expires": claims["exp"],
            }),
        );
    }
}
