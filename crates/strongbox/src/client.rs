//! `strongbox client`: the API from a shell, as DBCS users script the psm
//! tool. Starts backups and recoveries and follows their jobs (a progress
//! bar on a terminal), lists backups and recoveries. Exit status: 0 when
//! the job succeeded (or, without waiting, was accepted), 2 when it failed,
//! 1 when the request itself was refused (the server's message printed).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

const DBCS: &str = "/paas/service/dbcs/api/v1.1/instances";

#[derive(Args)]
pub struct ClientArgs {
    /// The server, e.g. https://strongbox.example.com:8080.
    #[arg(long, env = "STRONGBOX_URL")]
    url: String,
    /// Your identity domain.
    #[arg(long, short = 'd', env = "STRONGBOX_DOMAIN")]
    domain: String,
    /// Your user name; the password comes from STRONGBOX_USER_PASSWORD or a prompt.
    #[arg(long, short = 'u', env = "STRONGBOX_USER")]
    user: String,
    /// A CA certificate (PEM) to trust besides the system's.
    #[arg(long, env = "STRONGBOX_CACERT")]
    cacert: Option<PathBuf>,
    /// Print the server's JSON instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Back up a deployment, and follow the job to its end.
    Backup {
        service: String,
        /// Keep this backup outside the recovery window.
        #[arg(long)]
        keep_forever: bool,
        /// Print the job's URL and return once it is accepted.
        #[arg(long)]
        no_wait: bool,
    },
    /// Recover a deployment (overwriting it, or with --to into another
    /// place), and follow the job to its end.
    Recover {
        service: String,
        #[command(flatten)]
        target: Target,
        /// Recover into another place instead, leaving the deployment as it
        /// is: a setting it names instead (SQLite `path=/srv/copies/app.db`,
        /// postgresql-logical and command `database=shop_copy`, postgresql
        /// `data_dir=/var/lib/postgresql/15/copy` and `port=5433`, optionally
        /// `running=false`); repeat for several.
        #[arg(long, value_name = "SETTING=VALUE")]
        to: Vec<String>,
        /// With --to: overwrite what is there.
        #[arg(long, requires = "to")]
        replace: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// A deployment's backups, newest first.
    Backups { service: String },
    /// A deployment's recoveries.
    Recoveries { service: String },
    /// A job's status (its id or URL); --watch follows it to its end.
    Status {
        job: String,
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// The latest backup and, with archived WAL, everything since.
    #[arg(long)]
    latest: bool,
    /// A backup's tag.
    #[arg(long)]
    tag: Option<String>,
    /// A moment, dd-MMM-yyyy HH:mm:ss UTC.
    #[arg(long)]
    timestamp: Option<String>,
    /// A position in the database's history (PostgreSQL: an LSN).
    #[arg(long)]
    scn: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    domain: String,
    user: String,
    password: String,
    json: bool,
}

fn password() -> Result<String> {
    if let Ok(p) = std::env::var("STRONGBOX_USER_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set STRONGBOX_USER_PASSWORD, or run on a terminal to be asked");
    }
    rpassword::prompt_password("password: ").context("reading the password")
}

pub async fn run(args: ClientArgs) -> Result<ExitCode> {
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(60));
    if let Some(path) = &args.cacert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("the CA certificate")?);
    }
    let c = Client {
        http: http.build()?,
        base: args.url.trim_end_matches('/').to_string(),
        domain: args.domain,
        user: args.user,
        password: password()?,
        json: args.json,
    };
    match args.command {
        ClientCommand::Backup {
            service,
            keep_forever,
            no_wait,
        } => {
            let body = if keep_forever {
                json!({"keepForever": true})
            } else {
                json!({})
            };
            let job = c.start(&format!("{service}/backups"), body).await?;
            c.follow(&job, !no_wait).await
        }
        ClientCommand::Recover {
            service,
            target,
            to,
            replace,
            no_wait,
        } => {
            let mut body = match target {
                Target { latest: true, .. } => json!({"latest": true}),
                Target { tag: Some(t), .. } => json!({"tag": t}),
                Target { timestamp: Some(t), .. } => json!({"timestamp": t}),
                Target { scn: Some(s), .. } => json!({"scn": s}),
                _ => unreachable!("clap requires one target"),
            };
            if !to.is_empty() {
                let mut place = serde_json::Map::new();
                for setting in &to {
                    let (key, value) = setting.split_once('=').with_context(|| {
                        format!("--to {setting}: write SETTING=VALUE, e.g. path=/srv/copies/app.db")
                    })?;
                    place.insert(key.to_string(), json!(value));
                }
                body["target"] = serde_json::Value::Object(place);
                if replace {
                    body["replace"] = json!(true);
                }
            }
            let job = c.start(&format!("{service}/backups/recovery"), body).await?;
            c.follow(&job, !no_wait).await
        }
        ClientCommand::Backups { service } => {
            let v = c.get(&c.dbcs(&format!("{service}/backups"))).await?;
            c.table(
                &v,
                "backupList",
                &["dbTag", "status", "backupStartDate", "backupCompleteDate"],
            );
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Recoveries { service } => {
            let v = c.get(&c.dbcs(&format!("{service}/backups/recovery/history"))).await?;
            c.table(
                &v,
                "recoveryList",
                &["jobId", "status", "recoveryStartDate", "fromBackup"],
            );
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Status { job, watch } => {
            let url = c.job_url(&job).await?;
            c.follow(&url, watch).await
        }
    }
}

impl Client {
    fn dbcs(&self, rest: &str) -> String {
        format!("{}{DBCS}/{}/{rest}", self.base, self.domain)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .basic_auth(&self.user, Some(&self.password))
            .header("X-ID-TENANT-NAME", &self.domain)
    }

    /// The answer's JSON, or the server's message as the error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(reqwest::header::HeaderMap, Value)> {
        let resp = req.send().await.context("reaching the server")?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok((headers, body))
    }

    async fn get(&self, url: &str) -> Result<Value> {
        Ok(self.send(self.request(reqwest::Method::GET, url)).await?.1)
    }

    /// POSTs a job request; the job's URL.
    async fn start(&self, rest: &str, body: Value) -> Result<String> {
        let (headers, _) = self
            .send(self.request(reqwest::Method::POST, &self.dbcs(rest)).json(&body))
            .await?;
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .context("the server accepted the job but sent no Location")?;
        Ok(location.to_string())
    }

    /// A job's URL from its id (whichever operation it is) or its URL.
    async fn job_url(&self, job: &str) -> Result<String> {
        if job.starts_with("http") {
            return Ok(job.to_string());
        }
        for operation in ["backup", "recovery", "expire"] {
            let url = self.dbcs(&format!("status/{operation}/job/{job}"));
            let resp = self.request(reqwest::Method::GET, &url).send().await?;
            if resp.status() != reqwest::StatusCode::NOT_FOUND {
                return Ok(url);
            }
        }
        bail!("no job {job} in identity domain {}", self.domain)
    }

    /// Shows a job, following it to its end when `wait`: the exit status.
    async fn follow(&self, url: &str, wait: bool) -> Result<ExitCode> {
        let bar = if wait && std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} {bytes}/{total_bytes} [{bar:30}] {eta}").expect("valid template"),
        );
        let job = loop {
            let job = self.get(url).await?;
            if !wait || job["job_status"] != "In Progress" {
                break job;
            }
            let progress = &job["progress"];
            bar.set_message(format!(
                "job {} {}",
                job["job_id"],
                job["job_operation"].as_str().unwrap_or("")
            ));
            bar.set_length(progress["bytes_total"].as_u64().unwrap_or(0));
            bar.set_position(progress["bytes_done"].as_u64().unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        bar.finish_and_clear();
        if self.json {
            println!("{job:#}");
        } else {
            println!(
                "job {} {}: {}: {}\n{url}",
                job["job_id"],
                job["job_operation"].as_str().unwrap_or(""),
                job["job_status"].as_str().unwrap_or(""),
                job["message"].as_str().unwrap_or("")
            );
        }
        Ok(match job["job_status"].as_str() {
            Some("Failed") => ExitCode::from(2),
            _ => ExitCode::SUCCESS,
        })
    }

    fn table(&self, v: &Value, list: &str, columns: &[&str]) {
        if self.json {
            println!("{v:#}");
            return;
        }
        println!("{}", columns.join("\t"));
        for row in v[list].as_array().into_iter().flatten() {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| match &row[*c] {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                })
                .collect();
            println!("{}", cells.join("\t"));
        }
    }
}
