//! The gateway's OpenAPI document, served at `/openapi.json`: every route with the request
//! body its handler parses (derived from the same types by utoipa), its answers, its refusals
//! in OpenAI's error shape, and which routes need the API key. Clients generate from it;
//! schemathesis fuzzes the gateway from it (tests/openai_surface.rs).

use axum::Json;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Quark gateway",
        description = "OpenAI-compatible serving, feedback and administration of Quark's models."
    ),
    paths(
        crate::routes::models,
        crate::routes::model,
        crate::completions::completions,
        crate::routes::chat_completions,
        crate::embeddings::embeddings,
        crate::moderation::moderations,
        crate::feedback::feedback,
        crate::admin::status,
        crate::admin::retrain,
    ),
    modifiers(&KeyAndMetrics)
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The API key's scheme, and `/metrics` (served by the runtime's handler, so documented here).
struct KeyAndMetrics;

impl Modify for KeyAndMetrics {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(bearer));
        let text = ContentBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        let scraped = ResponseBuilder::new()
            .description("every service's metrics in Prometheus' text format")
            .content("text/plain", text)
            .build();
        let operation = OperationBuilder::new()
            .summary(Some("Metrics for Prometheus"))
            .response("200", scraped)
            .build();
        openapi
            .paths
            .add_path_operation("/metrics", vec![HttpMethod::Get], operation);
    }
}
