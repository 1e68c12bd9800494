//! `weftctl dashboard`: the status tables (pods, then hosts) as one self-contained web page (inline style and
//! script, no external assets), kept live with server-sent events. The page arrives with the
//! rows of the moment already in it, so it shows something before its event stream opens;
//! `/events` then sends the whole table whenever a status arrives, and once a second so
//! ages move and stale rows turn grey. Served by the agent's bounded HTTP server
//! ([`weft_agent::http`]). Everything a status carries is put in the page as text
//! (`textContent`), never as markup: statuses come off the bus.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use tokio::sync::watch;
use weft_agent::http::{self, respond, Body, Limits};
use weft_client::fleet::Fleet;
use weft_client::Client;

use crate::{fill, now_unix_ms, Exit};

/// Connections at once: the page and its event stream take two per viewer.
const CONNECTIONS: usize = 32;

pub async fn serve(client: Client, listen: SocketAddr, interval: Duration) -> Result<(), Exit> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Exit(1, format!("--listen {listen}: {e}")))?;
    let mut statuses = client.watch().await?;
    let mut host_statuses = client.watch_hosts().await?;
    let mut fleet = Fleet::new(interval);
    fill(&client, &mut fleet).await;
    let (tx, rx) = watch::channel(fleet);
    let host_tx = tx.clone();
    tokio::spawn(async move {
        while let Some(status) = statuses.next().await {
            tx.send_modify(|f| {
                f.update(status);
            });
        }
    });
    tokio::spawn(async move {
        while let Some(status) = host_statuses.next().await {
            host_tx.send_modify(|f| {
                f.update_host(status);
            });
        }
    });
    eprintln!(
        "weftctl: dashboard on http://{}/",
        listener.local_addr().unwrap_or(listen)
    );
    let limits = Limits {
        connections: CONNECTIONS,
        ..Limits::default()
    };
    http::serve(listener, limits, move |req| {
        let rx = rx.clone();
        async move {
            match req.uri().path() {
                "/" => respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    page(&rx.borrow()),
                ),
                "/events" => events(rx),
                _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            }
        }
    })
    .await;
    Ok(())
}

/// The table as the page's script reads it.
fn snapshot(fleet: &Fleet) -> String {
    serde_json::json!({
        "AtUnixMs": now_unix_ms(),
        "StaleAfterMs": fleet.stale_after().as_millis() as u64,
        "Rows": fleet.rows(now_unix_ms()),
        "Hosts": fleet.host_rows(now_unix_ms()),
    })
    .to_string()
}

fn page(fleet: &Fleet) -> String {
    // `</` cannot end the script element it sits in once escaped.
    let initial = snapshot(fleet).replace("</", "<\\/");
    PAGE.replace("/*INITIAL*/null", &initial)
}

fn events(rx: watch::Receiver<Fleet>) -> Response<Body> {
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let data = snapshot(&rx.borrow_and_update());
        let frame = Frame::data(Bytes::from(format!("event: rows\ndata: {data}\n\n")));
        Some((Ok::<_, Infallible>(frame), (rx, false)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("static headers are valid")
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>weft dashboard</title>
<style>
  :root { color-scheme: light; --ok: #1a7f37; --bad: #cf222e; --wait: #9a6700; --dim: #8c959f; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1f2328; background: #fff; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  #meta { color: var(--dim); margin-bottom: 16px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #d0d7de; white-space: nowrap; }
  th { background: #f6f8fa; font-weight: 600; }
  tbody tr { cursor: pointer; }
  tbody tr:hover { background: #f6f8fa; }
  tr.selected { background: #ddf4ff !important; }
  .Healthy { color: var(--ok); font-weight: 600; }
  .Degraded { color: var(--bad); font-weight: 600; }
  .Pending { color: var(--wait); font-weight: 600; }
  tr.stale td { color: var(--dim) !important; text-decoration: line-through; text-decoration-color: #d0d7de; }
  tr.stale td.age { text-decoration: none; }
  .badge { display: inline-block; padding: 0 6px; margin-left: 6px; border-radius: 8px; font-size: 11px;
           background: #eaeef2; color: #57606a; text-decoration: none; }
  td.drift { white-space: normal; max-width: 420px; }
  #detail { margin-top: 20px; }
  #detail h2 { font-size: 16px; margin: 0 0 6px; }
  #detail pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 12px; overflow: auto; max-height: 480px; }
  #empty, .empty { color: var(--dim); padding: 12px 10px; }
  h2.section { font-size: 16px; margin: 24px 0 6px; }
</style>
</head>
<body>
<h1>weft</h1>
<div id="meta">connecting...</div>
<table>
  <thead><tr>
    <th>Kind</th><th>Id</th><th>Generation<br><small>observed/wanted</small></th><th>Overall</th>
    <th>Network</th><th>Firewall</th><th>WireGuard</th><th>Peers<br><small>handshake/all</small></th>
    <th>Drift repairs</th><th>Last drift</th><th>Age</th>
  </tr></thead>
  <tbody id="rows"></tbody>
</table>
<div id="empty" hidden>No status yet.</div>
<h2 class="section">Hosts</h2>
<table>
  <thead><tr>
    <th>Kind</th><th>Id</th><th>Generation<br><small>observed/wanted</small></th><th>Overall</th>
    <th>Uplink</th><th>Forwarding</th><th>Sandboxes<br><small>ready/all</small></th><th>Port forwards</th>
    <th>Drift repairs</th><th>Last drift</th><th>Age</th>
  </tr></thead>
  <tbody id="hosts"></tbody>
</table>
<div id="no-hosts" class="empty" hidden>No host status yet.</div>
<div id="detail" hidden><h2 id="detail-title"></h2><pre id="detail-json"></pre></div>
<script>
"use strict";
const initial = /*INITIAL*/null;
let selected = null;
let latest = null;

function age(ms) {
  if (ms < 1000) return ms + "ms";
  if (ms < 60000) return Math.floor(ms / 1000) + "s";
  return Math.floor(ms / 60000) + "m" + Math.floor(ms / 1000) % 60 + "s";
}

function cell(tr, col, text, cls) {
  const td = document.createElement("td");
  td.dataset.col = col;
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function row(r) {
  const key = r.Kind + "/" + r.Id;
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  tr.dataset.stale = r.Stale ? "true" : "false";
  if (r.Stale) tr.classList.add("stale");
  if (key === selected) tr.classList.add("selected");
  tr.addEventListener("click", () => { selected = key; render(latest); });
  return tr;
}

function ageCell(tr, r) {
  const a = cell(tr, "age", age(r.AgeMs), "age");
  if (r.Stale) {
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = "stale";
    a.appendChild(b);
  }
}

function render(snap) {
  latest = snap;
  const hosts = snap.Hosts ?? [];
  const body = document.getElementById("rows");
  body.replaceChildren();
  for (const r of snap.Rows) {
    const tr = row(r);
    cell(tr, "kind", r.Kind);
    cell(tr, "id", r.Id);
    cell(tr, "generation", r.ObservedGeneration + "/" + (r.WantedGeneration ?? "-"));
    cell(tr, "overall", r.Overall, r.Overall);
    cell(tr, "network", r.Network ?? "-", r.Network);
    cell(tr, "firewall", r.Firewall ?? "-", r.Firewall);
    cell(tr, "wireguard", r.WireGuard ?? "-", r.WireGuard);
    cell(tr, "peers", r.PeersHandshaken + "/" + r.Peers);
    cell(tr, "drift", String(r.DriftRepairs));
    cell(tr, "lastdrift", r.LastDrift || "-", "drift");
    ageCell(tr, r);
    body.appendChild(tr);
  }
  const hostBody = document.getElementById("hosts");
  hostBody.replaceChildren();
  for (const r of hosts) {
    const tr = row(r);
    cell(tr, "kind", r.Kind);
    cell(tr, "id", r.Id);
    cell(tr, "generation", r.ObservedGeneration + "/" + (r.WantedGeneration ?? "-"));
    cell(tr, "overall", r.Overall, r.Overall);
    cell(tr, "uplink", r.Uplink ?? "-");
    cell(tr, "forwarding", r.Forwarding ? "on" : "off");
    cell(tr, "sandboxes", r.SandboxesReady + "/" + r.Sandboxes,
         r.SandboxesReady === r.Sandboxes ? "" : "Degraded");
    cell(tr, "forwards", String(r.Forwards));
    cell(tr, "drift", String(r.DriftRepairs));
    cell(tr, "lastdrift", r.LastDrift || "-", "drift");
    ageCell(tr, r);
    hostBody.appendChild(tr);
  }
  document.getElementById("empty").hidden = snap.Rows.length > 0;
  document.getElementById("no-hosts").hidden = hosts.length > 0;
  const all = snap.Rows.concat(hosts);
  const stale = all.filter(r => r.Stale).length;
  document.getElementById("meta").textContent =
    snap.Rows.length + " pod(s), " + hosts.length + " host(s), " + stale + " stale (no status for " +
    age(snap.StaleAfterMs) + ") - updated " +
    new Date(snap.AtUnixMs).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  const chosen = all.find(r => r.Kind + "/" + r.Id === selected);
  const detail = document.getElementById("detail");
  detail.hidden = !chosen;
  if (chosen) {
    document.getElementById("detail-title").textContent = chosen.Kind + " " + chosen.Id;
    document.getElementById("detail-json").textContent = JSON.stringify(chosen.Status, null, 2);
  }
}

if (initial) render(initial);
const events = new EventSource("/events");
events.addEventListener("rows", e => render(JSON.parse(e.data)));
events.onerror = () => { document.getElementById("meta").textContent += " (reconnecting)"; };
</script>
</body>
</html>
"##;
