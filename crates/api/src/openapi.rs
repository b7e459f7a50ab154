//! `/openapi.json`: the served API described with utoipa's builders.

use utoipa::openapi::path::{OperationBuilder, ParameterBuilder, ParameterIn, PathItemBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{
    ContentBuilder, HttpMethod, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Required, ResponseBuilder,
};

use crate::PREFIX;

fn param(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .build()
}

fn op(summary: &str, params: &[(&str, &str)], responses: &[(&str, &str)]) -> OperationBuilder {
    let mut b = OperationBuilder::new().summary(Some(summary)).parameter(
        ParameterBuilder::new()
            .name("X-ID-TENANT-NAME")
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .description(Some("the identity domain, as in the path")),
    );
    for (name, description) in params {
        b = b.parameter(param(name, description));
    }
    for (code, description) in responses {
        b = b.response(*code, ResponseBuilder::new().description(*description));
    }
    b
}

const DOMAIN: (&str, &str) = (
    "identityDomainId",
    "identity domain name, or an `idcs-…` identity service id",
);
const SERVICE: (&str, &str) = ("serviceId", "database deployment name");
const ERRORS: [(&str, &str); 3] = [
    ("401", "missing or wrong credentials (`{\"message\"}`)"),
    ("403", "user or X-ID-TENANT-NAME of another identity domain"),
    ("404", "unknown deployment or job"),
];

fn json_body(description: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .description(Some(description))
        .required(Some(Required::True))
        .content("application/json", ContentBuilder::new().build())
        .build()
}

pub fn spec() -> OpenApi {
    let with_errors = |ok: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        ok.iter().chain(ERRORS.iter()).copied().collect()
    };
    let backups = PathItemBuilder::new()
        .operation(
            HttpMethod::Post,
            op(
                "Start a backup: 202, empty body, Location of the job",
                &[DOMAIN, SERVICE],
                &with_errors(&[
                    ("202", "accepted; `Location` is the job status URI"),
                    ("400", "body not a JSON object, unknown field, wrong type"),
                    ("409", "a job of this deployment is already in progress"),
                    ("413", "body too large"),
                    ("415", "Content-Type is not application/json"),
                ]),
            )
            .request_body(Some(json_body("`{}` or `{\"keepForever\": true}`"))),
        )
        .operation(
            HttpMethod::Get,
            op(
                "View all backups: `backupList`",
                &[DOMAIN, SERVICE],
                &with_errors(&[("200", "the backups")]),
            ),
        )
        .build();
    let paths = PathsBuilder::new()
        .path(
            format!("{PREFIX}/{{identityDomainId}}"),
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    op("List database deployments", &[DOMAIN], &with_errors(&[("200", "")])),
                )
                .build(),
        )
        .path(
            format!("{PREFIX}/{{identityDomainId}}/{{serviceId}}"),
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    op(
                        "View a deployment; for `postgresql` ones, `pointInTimeRecovery`: the archive_command and \
                         restore_command to set, the current timeline, whether the server answers, and the \
                         recoverable range of the current history (`earliest`/`latest` scn and timestamp)",
                        &[DOMAIN, SERVICE],
                        &with_errors(&[("200", "")]),
                    ),
                )
                .build(),
        )
        .path(format!("{PREFIX}/{{identityDomainId}}/{{serviceId}}/backups"), backups)
        .path(
            format!("{PREFIX}/{{identityDomainId}}/{{serviceId}}/backups/recovery"),
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Post,
                    op(
                        "Start a recovery in place: 202, empty body, Location of the job",
                        &[DOMAIN, SERVICE],
                        &with_errors(&[
                            ("202", "accepted; `Location` is the job status URI"),
                            (
                                "400",
                                "not exactly one target, bad date, a target the archive does not reach (the \
                                 message names the recoverable range) or a moment of an abandoned timeline (the \
                                 message names it)",
                            ),
                            ("404", "no completed backup with that dbTag in the repository"),
                            ("409", "a job of this deployment is already in progress"),
                        ]),
                    )
                    .request_body(Some(json_body(
                        "exactly one of `latest` (true, \"true\", \"yes\": the latest backup and, where WAL is \
                         archived, complete recovery to the last committed change), `tag` (a dbTag), `timestamp` \
                         (dd-MMM-yyyy HH:mm:ss, UTC: a backup's completion time, or with archived WAL any moment \
                         of the current history), `scn` (a PostgreSQL LSN, `0/3000060` or decimal, of the current \
                         history); optional `keepForever`. A Strongbox extension: `timeline` (a number) with a \
                         `timestamp` or `scn` names the timeline whose history the target belongs to, to recover \
                         a point a later recovery abandoned.",
                    ))),
                )
                .build(),
        )
        .path(
            format!("{PREFIX}/{{identityDomainId}}/{{serviceId}}/backups/recovery/history"),
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    op(
                        "View recoveries: `recoveryList`; each completed point-in-time recovery adds `reached` \
                         (scn and timeline replay stopped at, the last commit replayed, the timeline begun)",
                        &[DOMAIN, SERVICE],
                        &with_errors(&[("200", "")]),
                    ),
                )
                .build(),
        )
        .path(
            format!("{PREFIX}/{{identityDomainId}}/status/{{requestName}}/job/{{jobId}}"),
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    op(
                        "Job status, with progress",
                        &[
                            DOMAIN,
                            ("requestName", "`backup` or `recovery`"),
                            ("jobId", "the job id from `Location`"),
                        ],
                        &with_errors(&[("200", "")]),
                    ),
                )
                .build(),
        )
        .path(
            "/paas/api/v1.1/activitylog/{identityDomainId}/job/{jobId}",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    op(
                        "Activity log of a job",
                        &[DOMAIN, ("jobId", "job id")],
                        &with_errors(&[("200", "")]),
                    ),
                )
                .build(),
        )
        .path(
            "/strongbox/api/v1/instances/{identityDomainId}/{serviceId}",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Put,
                    op(
                        "Register an existing database as a deployment (Strongbox's own surface)",
                        &[DOMAIN, SERVICE],
                        &with_errors(&[("200", "the deployment"), ("400", "unknown engine or bad settings")]),
                    )
                    .request_body(Some(json_body(
                        "`{\"engine\": \"sqlite\" | \"postgresql\" | \"postgresql-logical\" | \"command\", \"connection\": {…}}` \
                         (settings per engine in the README)",
                    ))),
                )
                .build(),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Strongbox: DBCS backup & recovery API v1.1")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "HTTP Basic auth and X-ID-TENANT-NAME on every request; errors are {\"message\": …}",
                )),
        )
        .paths(paths)
        .build()
}
