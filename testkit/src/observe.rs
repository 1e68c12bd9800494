//! Independent observers: the tools an operator would use, run inside a namespace, parsed
//! for assertions. They never share code with the agent's own read-back.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::netns::{run, Netns};

/// The table as `nft -j` shows it: a metainfo object, a `table` object (family and name
/// only), then each chain and its rules, or `None` when the table does not exist.
///
/// Built from `nft -j list chain` of each chain rather than `nft -j list table`: nft 1.0.6
/// prints table flags it does not know (`persist`) from out-of-bounds memory in JSON, which
/// sometimes truncates the whole document. Chain listings carry no table flags.
pub fn nft_table(ns: &Netns, family: &str, name: &str) -> Result<Option<Value>> {
    let out = ns
        .command("nft")
        .args(["list", "table", family, name])
        .output()
        .context("spawn nft")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        anyhow::bail!("nft list table {family} {name}: {}", err.trim());
    }
    let chains = nft_json(ns, &["list", "chains", family])?;
    let mut objects = vec![
        chains[0].clone(),
        serde_json::json!({ "table": { "family": family, "name": name } }),
    ];
    for chain in chains.as_array().into_iter().flatten() {
        let c = &chain["chain"];
        if c["table"] != name {
            continue;
        }
        let listed = nft_json(
            ns,
            &[
                "list",
                "chain",
                family,
                name,
                c["name"].as_str().unwrap_or_default(),
            ],
        )?;
        objects.extend(listed.as_array().into_iter().flatten().skip(1).cloned());
    }
    Ok(Some(Value::Array(objects)))
}

/// `nft -j <args..>`: the `nftables` array.
fn nft_json(ns: &Netns, args: &[&str]) -> Result<Value> {
    let out = ns.run("nft", &[&["-j"], args].concat())?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "parse nft -j {}: {:?}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(v["nftables"].clone())
}

/// `nft list table <family> <name>` as text (for byte-identical comparisons), without what
/// its counters counted ([`uncounted`]: a counter's values are in [`nft_table`]).
pub fn nft_table_text(ns: &Netns, family: &str, name: &str) -> Result<String> {
    let out = ns.run("nft", &["list", "table", family, name])?;
    Ok(uncounted(&String::from_utf8(out.stdout)?))
}

/// `nft list ruleset` as text, without what counters counted ([`uncounted`]).
pub fn nft_ruleset_text(ns: &Netns) -> Result<String> {
    let out = ns.run("nft", &["list", "ruleset"])?;
    Ok(uncounted(&String::from_utf8(out.stdout)?))
}

/// `ip -j <args..>` parsed.
pub fn ip_json(ns: &Netns, args: &[&str]) -> Result<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = run(std::process::Command::new("ip")
        .arg("-n")
        .arg(ns.name())
        .args(&full))?;
    serde_json::from_slice(&out.stdout).context("parse ip -j")
}

/// The IPv4 addresses of `ifname` as `addr/prefix` strings (`ip -j -4 addr show dev`).
pub fn ipv4_addrs(ns: &Netns, ifname: &str) -> Result<Vec<String>> {
    let v = ip_json(ns, &["-4", "addr", "show", "dev", ifname])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect())
}

/// `wg show <ifname> dump`, split into lines of tab-separated fields.
pub fn wg_dump(ns: &Netns, ifname: &str) -> Result<Vec<Vec<String>>> {
    let out = ns.run("wg", &["show", ifname, "dump"])?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}

/// Everything in the namespace's kernel that an agent could touch (the whole nftables ruleset,
/// addresses, routes, links), as text for byte comparisons. IPv6 link-local addresses finish
/// duplicate address detection on their own time: their `tentative` flag is nobody's change;
/// nor is what a rule's counter counted (see [`uncounted`]).
pub fn kernel_snapshot(ns: &Netns) -> Result<String> {
    Ok(format!(
        "{}\n{}\n{}\n{}",
        nft_ruleset_text(ns)?,
        ip_json(ns, &["addr"])?,
        ip_json(ns, &["route"])?,
        ip_json(ns, &["link"])?
    )
    .replace("\"tentative\":true,", ""))
}

/// `nft` output (text or JSON) with what counters counted left out: `counter packets 3 bytes
/// 180` becomes `counter`, `{"counter": {"packets": 3, "bytes": 180}}` becomes
/// `{"counter": null}`. Traffic moves counters; a comparison of rulesets must not see it.
pub fn uncounted(nft: &str) -> String {
    static TEXT: std::sync::OnceLock<(regex::Regex, regex::Regex)> = std::sync::OnceLock::new();
    let (text, json) = TEXT.get_or_init(|| {
        (
            regex::Regex::new(r"counter packets \d+ bytes \d+").expect("a valid regex"),
            regex::Regex::new(r#""counter": ?\{"packets": ?\d+, ?"bytes": ?\d+\}"#)
                .expect("a valid regex"),
        )
    });
    let once = text.replace_all(nft, "counter");
    json.replace_all(&once, r#""counter": null"#).into_owned()
}
