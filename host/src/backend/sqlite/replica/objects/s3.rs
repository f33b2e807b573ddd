//! The S3 object store: any S3 API (AWS, MinIO, moto, R2), configured from
//! the standard AWS variables. "Create only if absent" is `If-None-Match: *`
//! on PUT; files larger than one part go up as a streamed multipart upload.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use futures::future::BoxFuture;

use super::{ObjectMeta, ObjectStore, dir_err};
use crate::backend::sqlite::replica::ReplicaError;
use crate::limits;

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Build an S3 client from the standard AWS variables (and litestream's).
pub async fn s3_client() -> Result<Client, ReplicaError> {
    let region = env_nonempty("AWS_REGION").or_else(|| env_nonempty("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(limits::S3_OP_TIMEOUT)
                .connect_timeout(Duration::from_secs(3))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    let key = env_nonempty("AWS_ACCESS_KEY_ID").or_else(|| env_nonempty("LITESTREAM_ACCESS_KEY_ID"));
    let secret = env_nonempty("AWS_SECRET_ACCESS_KEY").or_else(|| env_nonempty("LITESTREAM_SECRET_ACCESS_KEY"));
    match (key, secret) {
        (Some(k), Some(s)) => {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                k,
                s,
                env_nonempty("AWS_SESSION_TOKEN"),
                None,
                "sidekv-env",
            ));
        }
        (Some(_), None) => {
            return Err(ReplicaError::Config {
                setting: "AWS_SECRET_ACCESS_KEY",
                msg: "AWS_ACCESS_KEY_ID is set but the secret key is not".into(),
            });
        }
        (None, Some(_)) => {
            return Err(ReplicaError::Config {
                setting: "AWS_ACCESS_KEY_ID",
                msg: "a secret key is set but the access key id is not".into(),
            });
        }
        (None, None) => {}
    }
    let endpoint = env_nonempty("AWS_ENDPOINT_URL_S3").or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    if let Some(ep) = &endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(ReplicaError::Config { setting: "AWS_ENDPOINT_URL", msg: format!("{ep:?} must start with http:// or https://") });
        }
        loader = loader.endpoint_url(ep);
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared);
    if endpoint.is_some() {
        // MinIO, moto and most self-hosted S3s need path-style addressing.
        b = b.force_path_style(true);
    }
    Ok(Client::from_conf(b.build()))
}

fn sdk_msg<E: std::fmt::Debug, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => format!("{:?}", s.err()).chars().take(300).collect(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) => format!("could not connect: {d:?}").chars().take(300).collect(),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

fn http_status<E>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Objects under `s3://bucket/prefix/`.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// Multipart part size; files larger than one part are uploaded in parts.
    part_bytes: u64,
}

impl S3Store {
    pub fn new(client: Client, bucket: String, prefix: String, part_bytes: u64) -> S3Store {
        S3Store { client, bucket, prefix, part_bytes }
    }

    fn full(&self, rel: &str) -> String {
        if self.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.prefix) }
    }

    fn err(op: &'static str, key: &str, msg: String) -> ReplicaError {
        ReplicaError::S3 { op, key: key.into(), msg }
    }
}

impl S3Store {
    /// A file too large for one PUT (S3 caps it at 5 GB; long single PUTs
    /// also fail more), as a multipart upload whose parts are streamed from
    /// the file. Only snapshots are this large; a snapshot's name is not a
    /// fencing token (it is published only after every segment up to its
    /// commit is ours), so "only if absent" is a check before the upload.
    async fn put_multipart(&self, full: &str, path: &Path, size: u64) -> Result<bool, ReplicaError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        if self.client.head_object().bucket(&self.bucket).key(full).send().await.is_ok() {
            return Ok(false);
        }
        let up = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| Self::err("PUT", full, sdk_msg(&e)))?;
        let id = up.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let (mut offset, mut n) = (0u64, 1i32);
            while offset < size {
                let len = self.part_bytes.min(size - offset);
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(aws_sdk_s3::primitives::Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| Self::err("PUT", full, format!("reading {}: {e}", path.display())))?;
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&id)
                    .part_number(n)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Self::err("PUT", full, format!("part {n}: {}", sdk_msg(&e))))?;
                parts.push(CompletedPart::builder().part_number(n).set_e_tag(r.e_tag().map(str::to_string)).build());
                offset += len;
                n += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| Self::err("PUT", full, sdk_msg(&e)))
        }
        .await;
        if let Err(e) = result {
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(full).upload_id(&id).send().await;
            return Err(e);
        }
        Ok(true)
    }
}

impl ObjectStore for S3Store {
    fn list_meta<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<ObjectMeta>, ReplicaError>> {
        Box::pin(async move {
            let prefix = self.full(&format!("{dir}/"));
            let base = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let r = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| Self::err("LIST", &prefix, sdk_msg(&e)))?;
                for o in r.contents() {
                    if let Some(k) = o.key() {
                        let modified_ms = o.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0).max(0) as u64;
                        out.push(ObjectMeta { key: k[base..].to_string(), bytes: o.size().unwrap_or(0).max(0) as u64, modified_ms });
                    }
                }
                match r.next_continuation_token() {
                    Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    /// The keys of `list_meta` (one LIST pager for both).
    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, ReplicaError>> {
        Box::pin(async move { Ok(self.list_meta(dir).await?.into_iter().map(|o| o.key).collect()) })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            let o =
                self.client.get_object().bucket(&self.bucket).key(&full).send().await.map_err(|e| Self::err("GET", &full, sdk_msg(&e)))?;
            Ok(o.body.collect().await.map_err(|e| Self::err("GET", &full, e.to_string()))?.into_bytes().to_vec())
        })
    }

    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            let r = self.client.put_object().bucket(&self.bucket).key(&full).if_none_match("*").body(ByteStream::from(body)).send().await;
            match r {
                Ok(_) => Ok(true),
                Err(e) if http_status(&e) == Some(412) => Ok(false),
                Err(e) => Err(Self::err("PUT", &full, sdk_msg(&e))),
            }
        })
    }

    fn put_new_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            let size = std::fs::metadata(path).map_err(|e| dir_err("PUT", path, e))?.len();
            if size > self.part_bytes {
                return self.put_multipart(&full, path, size).await;
            }
            let body =
                ByteStream::from_path(path).await.map_err(|e| Self::err("PUT", &full, format!("reading {}: {e}", path.display())))?;
            let r = self.client.put_object().bucket(&self.bucket).key(&full).if_none_match("*").body(body).send().await;
            match r {
                Ok(_) => Ok(true),
                Err(e) if http_status(&e) == Some(412) => Ok(false),
                Err(e) => Err(Self::err("PUT", &full, sdk_msg(&e))),
            }
        })
    }

    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<u64, ReplicaError>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let full = self.full(key);
            let o =
                self.client.get_object().bucket(&self.bucket).key(&full).send().await.map_err(|e| Self::err("GET", &full, sdk_msg(&e)))?;
            let local = |e: std::io::Error| dir_err("GET", path, e);
            let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(path).await.map_err(local)?);
            let mut body = o.body;
            let mut n = 0u64;
            while let Some(chunk) = body.try_next().await.map_err(|e| Self::err("GET", &full, e.to_string()))? {
                n += chunk.len() as u64;
                out.write_all(&chunk).await.map_err(local)?;
            }
            out.flush().await.map_err(local)?;
            Ok(n)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Self::err("DELETE", &full, sdk_msg(&e)))
        })
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn name(&self, key: &str) -> String {
        self.full(key)
    }
}
