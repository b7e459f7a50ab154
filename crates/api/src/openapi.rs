//! One list of endpoints feeds both the router and `/openapi.json`: each
//! handler's `#[utoipa::path]` names its path, method, parameters, body and
//! responses, and the router serves exactly those paths and methods.

use std::sync::Arc;

use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, RefOr, ResponseBuilder,
    Schema,
};
use utoipa::{PartialSchema, ToSchema};

use strongbox_catalog::Role;

use crate::{AppState, handlers, recovery, wire};

/// One route: what serves it, the role it needs, and what documents it.
pub(crate) struct Endpoint {
    pub path: String,
    pub handler: MethodRouter<Arc<AppState>>,
    /// What the caller's role must be at least, in the path's domain.
    pub role: Role,
    methods: Vec<HttpMethod>,
    operation: Operation,
    schemas: Vec<(String, RefOr<Schema>)>,
}

fn filter(m: &HttpMethod) -> MethodFilter {
    match m {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

/// The endpoint `P` (a handler's `#[utoipa::path]`) documents, served by
/// `handler` to callers with at least `role`.
fn endpoint<P, H, T>(role: Role, handler: H) -> Endpoint
where
    P: utoipa::Path + utoipa::__dev::SchemaReferences,
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let methods = P::methods();
    let mut router = MethodRouter::new();
    for m in &methods {
        router = router.on(filter(m), handler.clone());
    }
    let mut schemas = Vec::new();
    P::schemas(&mut schemas);
    Endpoint {
        path: P::path(),
        handler: router,
        role,
        methods,
        operation: P::operation(),
        schemas,
    }
}

/// Every route behind the auth layer, with the role it needs: reads need
/// `reader`, starting jobs and changing configuration `operator`, and
/// registering deployments (whose settings name files and commands on the
/// server's machine) `admin`.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    use Role::{Admin, Operator, Reader};
    vec![
        endpoint::<handlers::__path_instances, _, _>(Reader, handlers::instances),
        endpoint::<handlers::__path_instance_detail, _, _>(Reader, handlers::instance_detail),
        endpoint::<handlers::__path_list_backups, _, _>(Reader, handlers::list_backups),
        endpoint::<handlers::__path_start_backup, _, _>(Operator, handlers::start_backup),
        endpoint::<recovery::__path_start_recovery, _, _>(Operator, recovery::start_recovery),
        endpoint::<handlers::__path_start_drill, _, _>(Operator, handlers::start_drill),
        endpoint::<recovery::__path_history, _, _>(Reader, recovery::history),
        endpoint::<handlers::__path_job_status, _, _>(Reader, handlers::job_status),
        endpoint::<handlers::__path_activity_log, _, _>(Reader, handlers::activity_log),
        endpoint::<handlers::__path_delete_backup, _, _>(Operator, handlers::delete_backup),
        endpoint::<handlers::__path_backup_config, _, _>(Reader, handlers::backup_config),
        endpoint::<handlers::__path_change_backup_config, _, _>(Operator, handlers::change_backup_config),
        endpoint::<handlers::__path_register_deployment, _, _>(Admin, handlers::register_deployment),
    ]
}

const SECURITY: &str = "basicAuth";

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    wire::ErrorBody::name(),
                ))))
                .build(),
        )
        .build()
}

/// The document for `endpoints`: every operation behind HTTP Basic, with
/// the auth layer's answers added.
pub(crate) fn spec(endpoints: &[Endpoint]) -> OpenApi {
    let mut paths = PathsBuilder::new().build();
    let mut components = ComponentsBuilder::new()
        .schema(wire::ErrorBody::name(), wire::ErrorBody::schema())
        .security_scheme(
            SECURITY,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    for e in endpoints {
        let mut op = e.operation.clone();
        op.security = Some(vec![SecurityRequirement::new(SECURITY, Vec::<String>::new())]);
        for (code, why) in [
            ("401", "missing or wrong credentials, or no X-ID-TENANT-NAME"),
            (
                "403",
                "X-ID-TENANT-NAME or the user of another identity domain, or a reader starting a job",
            ),
        ] {
            op.responses
                .responses
                .insert(code.into(), RefOr::T(error_response(why)));
        }
        paths.add_path_operation(&e.path, e.methods.clone(), op);
        for (name, schema) in &e.schemas {
            components = components.schema(name.clone(), schema.clone());
        }
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Strongbox: DBCS backup & recovery API v1.1")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The Oracle Database Cloud Service backup & recovery REST API, served wire-compatibly, plus \
                     Strongbox's documented additions. HTTP Basic auth and X-ID-TENANT-NAME on every request; \
                     errors are {\"message\": …}.",
                )),
        )
        .paths(paths)
        .components(Some(components.build()))
        .build()
}
