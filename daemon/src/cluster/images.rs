//! Image files in a cluster: every member has every image's record (replicated), but the
//! files stay where the image was imported. A member about to create an instance from an
//! image it lacks fetches the files from a member that has them, over the member link
//! (`GET /internal/cluster/images/{fp}/{part}`), and checks the fingerprint before keeping
//! them.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::daemon::Daemon;
use crate::image::{rootfs_tarball_path, tarball_path};

pub const IMAGE_PATH: &str = "/internal/cluster/images";

/// Which file of an image: its (metadata or unified) tarball, or the split rootfs.
pub fn part_path(d: &Daemon, fp: &str, part: &str) -> Option<std::path::PathBuf> {
    match part {
        "meta" => Some(tarball_path(d, fp)),
        "rootfs" => Some(rootfs_tarball_path(d, fp)),
        _ => None,
    }
}

async fn fetch_part(
    rt: &crate::cluster::member::Member,
    addr: &str,
    fp: &str,
    part: &str,
    dst: &Path,
    hash: &mut Sha256,
) -> Result<bool, String> {
    let req = http::Request::get(format!("{IMAGE_PATH}/{fp}/{part}"))
        .body(super::peer::empty_body())
        .map_err(|e| e.to_string())?;
    let resp = rt
        .peer()
        .request(addr, req)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() == http::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let tmp = dst.with_extension("partial");
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut body = http_body_util::BodyDataStream::new(resp.into_body());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        hash.update(&chunk);
        f.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    f.sync_all().await.map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, dst)
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// Makes sure this member has the files of image `fp`, fetching them if needed.
pub async fn ensure_local(d: &Arc<Daemon>, fp: &str) -> Result<(), String> {
    if tarball_path(d, fp).exists() {
        return Ok(());
    }
    let Some(rt) = d.cluster() else {
        return Err(format!("image {fp} has no files here"));
    };
    let members = d.db.members().map_err(|e| e.to_string())?;
    let mut last = String::from("no member has it");
    for m in members.into_iter().filter(|m| m.name != rt.name()) {
        let mut hash = Sha256::new();
        let meta = tarball_path(d, fp);
        match fetch_part(&rt, &m.address, fp, "meta", &meta, &mut hash).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                last = format!("member {}: {e}", m.name);
                continue;
            }
        }
        let rootfs = rootfs_tarball_path(d, fp);
        if let Err(e) = fetch_part(&rt, &m.address, fp, "rootfs", &rootfs, &mut hash).await {
            last = format!("member {}: {e}", m.name);
            let _ = std::fs::remove_file(&meta);
            continue;
        }
        let got = hex::encode(hash.finalize());
        if got != fp {
            let _ = std::fs::remove_file(&meta);
            let _ = std::fs::remove_file(&rootfs);
            last = format!("member {} sent files with fingerprint {got}", m.name);
            continue;
        }
        tracing::info!("image {fp} fetched from member {}", m.name);
        return Ok(());
    }
    Err(format!("fetching image {fp} from the cluster: {last}"))
}
