//! stack-node: the node agent of Paygress's local test stack.
//!
//! There is no container runtime, kubelet, scheduler or controller-manager in
//! the stack. This agent registers one Node, binds every unscheduled pod to
//! it, makes bound pods Running with an IP from a loopback pod CIDR and, for
//! pods that look like linuxserver/openssh-server, serves SSH at
//! `<podIP>:2222` with exactly the credentials from the pod spec.

mod creds;
mod health;
mod ipam;
mod node;
mod pods;
mod sshd;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::{info, warn};

const USAGE: &str =
    "usage: stack-node --kubeconfig PATH --node-name NAME --pod-cidr CIDR --state-dir DIR --health HOST:PORT\n\
                  [--kubelet-port PORT]   (where the node's kubelet API answers: stack-kubelet)\n\
  e.g. stack-node --kubeconfig admin.kubeconfig --node-name paygress-node --pod-cidr 127.0.100.0/24 \\\n\
       --state-dir /tmp/stack-node --health 127.0.0.1:10250\n\
  Logging: RUST_LOG (default info).";

#[derive(Debug, PartialEq)]
struct Args {
    kubeconfig: PathBuf,
    node_name: String,
    pod_cidr: String,
    state_dir: PathBuf,
    health: SocketAddr,
    /// Published as the Node's kubeletEndpoint; the API server sends port-forward there. 0: none.
    kubelet_port: u16,
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let mut kubeconfig = None;
    let mut node_name = None;
    let mut pod_cidr = None;
    let mut state_dir = None;
    let mut health = None;
    let mut kubelet_port = 0;
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if flag == "-h" || flag == "--help" {
            bail!("{USAGE}");
        }
        let mut value = || -> anyhow::Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().with_context(|| format!("{flag} needs a value\n{USAGE}")),
            }
        };
        match flag {
            "--kubeconfig" => kubeconfig = Some(PathBuf::from(value()?)),
            "--node-name" => node_name = Some(value()?),
            "--pod-cidr" => pod_cidr = Some(value()?),
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--health" => {
                let v = value()?;
                health = Some(v.parse().with_context(|| format!("--health {v:?}: expected HOST:PORT"))?)
            }
            "--kubelet-port" => {
                let v = value()?;
                kubelet_port = v.parse().with_context(|| format!("--kubelet-port {v:?}: expected a port"))?
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let missing = |n: &str| anyhow::anyhow!("missing {n}\n{USAGE}");
    Ok(Args {
        kubeconfig: kubeconfig.ok_or_else(|| missing("--kubeconfig"))?,
        node_name: node_name.ok_or_else(|| missing("--node-name"))?,
        pod_cidr: pod_cidr.ok_or_else(|| missing("--pod-cidr"))?,
        state_dir: state_dir.ok_or_else(|| missing("--state-dir"))?,
        health: health.ok_or_else(|| missing("--health"))?,
        kubelet_port,
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    info!("shutting down");
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("creating {}", args.state_dir.display()))?;
    // Validate the CIDR before touching the API.
    ipam::Ipam::new(&args.pod_cidr)?;

    let synced = Arc::new(AtomicBool::new(false));
    let health_listener = tokio::net::TcpListener::bind(args.health)
        .await
        .with_context(|| format!("binding health endpoint {}", args.health))?;
    tokio::spawn(health::serve(health_listener, synced.clone()));
    info!(addr = %args.health, "health endpoint listening");

    let kubeconfig =
        Kubeconfig::read_from(&args.kubeconfig).with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    let client = kube::Client::try_from(config).context("building API client")?;

    // The apiserver may still be starting: retry until the Node is registered.
    let node = node::NodeAgent::new(client.clone(), &args.node_name, &args.pod_cidr, args.kubelet_port);
    let mut delay = Duration::from_millis(500);
    loop {
        match node.ensure().await {
            Ok(()) => break,
            Err(e) => {
                warn!("registering node (retrying in {delay:?}): {e:#}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {},
                    _ = shutdown_signal() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tokio::spawn(node.heartbeat());

    let agent = pods::PodAgent::new(client, &args.node_name, &args.pod_cidr, args.state_dir.clone(), synced)?;
    agent.run(shutdown_signal()).await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stack-node: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stack-node: starting runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_cli() {
        let a = parse_args(&argv(
            "--kubeconfig /k --node-name paygress-node --pod-cidr 127.0.100.0/24 --state-dir /s --health 127.0.0.1:1234",
        ))
        .unwrap();
        assert_eq!(
            a,
            Args {
                kubeconfig: "/k".into(),
                node_name: "paygress-node".into(),
                pod_cidr: "127.0.100.0/24".into(),
                state_dir: "/s".into(),
                health: "127.0.0.1:1234".parse().unwrap(),
                kubelet_port: 0,
            }
        );
        let c = parse_args(&argv(
            "--kubeconfig /k --node-name n --pod-cidr c --state-dir /s --health 127.0.0.1:1 --kubelet-port 28250",
        ))
        .unwrap();
        assert_eq!(c.kubelet_port, 28250);
        let b = parse_args(&argv(
            "--kubeconfig=/k --node-name=paygress-node --pod-cidr=127.0.100.0/24 --state-dir=/s --health=127.0.0.1:1234",
        ))
        .unwrap();
        assert_eq!(a, b);
        assert!(parse_args(&argv("--kubeconfig /k")).is_err());
        assert!(parse_args(&argv("--bogus x")).is_err());
        assert!(parse_args(&argv("--kubeconfig")).is_err());
        assert!(parse_args(&argv("--kubeconfig /k --node-name n --pod-cidr c --state-dir /s --health nope")).is_err());
    }
}
