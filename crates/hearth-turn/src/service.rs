//! The TURN service as the binary sees it ([`hearth_service::Service`]).

use crate::{Config, Server, TurnError};
use hearth_core::ids::ServerName;
use hearth_core::storage::Schema;
use hearth_service::{BoxFuture, Context, Parts, Service, ServiceError, Task};
use std::net::IpAddr;

/// TURN keeps nothing in the database.
pub static SCHEMA: Schema = Schema {
    component: "turn",
    depends_on: &[],
    migrations: &[],
};

fn service_error(e: TurnError) -> ServiceError {
    match e {
        TurnError::Config(m) => ServiceError::Config(m),
        other => ServiceError::Start(other.to_string()),
    }
}

/// Addresses clients on the internet cannot reach.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local(),
    }
}

impl Config {
    /// What production still needs, for the start-up summary.
    fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        if !self.tls_enabled() {
            advice.push(
                "turn: set tls_cert_file and tls_key_file so clients behind \
                 HTTPS-only firewalls can use turns:"
                    .to_owned(),
            );
        }
        if let Ok(relays) = self.relay_addrs() {
            for r in relays.iter().filter(|r| is_private(r.advertised)) {
                advice.push(format!(
                    "turn: relays are advertised as private address {}; set external_ip \
                     to the public address",
                    r.advertised
                ));
            }
        }
        advice
    }
}

impl Service for Config {
    fn name(&self) -> &'static str {
        "turn"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn check(&self, _server_name: &ServerName) -> Result<(), ServiceError> {
        Config::check(self).map_err(service_error)
    }

    fn build<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Parts, ServiceError>> {
        Box::pin(async move {
            let mut config = self.clone();
            // Synapse's guide makes the realm the server name.
            config
                .realm
                .get_or_insert_with(|| ctx.server_name.as_str().to_owned());
            let server = Server::bind(&config).map_err(service_error)?;
            let summary = server.summary();
            let shutdown = ctx.shutdown.wait();
            let run = async move {
                if let Err(e) = server.run(shutdown).await {
                    tracing::error!(error = %e, "TURN server stopped");
                }
            };
            Ok(Parts {
                routes: None,
                tasks: vec![Task::new("turn", run)],
                summary,
                advice: config.advice(),
            })
        })
    }
}
