//! The bucket, through `object_store`'s S3 client: create-only uploads with a SHA-256
//! checksum on every request, a confirming `HEAD`, and downloads by version.
//!
//! * A file up to `part_size_mb` goes up in one `PUT` with `If-None-Match: *`; a larger one
//!   in parts, completed with `If-None-Match: *` (a second client whose only request is the
//!   completion carries that header).
//! * Every request carries `x-amz-checksum-sha256` of its body, so the store checks what it
//!   received; the whole object's SHA-256 goes in its metadata (`x-amz-meta-sha256`).
//! * A `412` on create means the key is taken: the object there counts as this upload only
//!   if its size and SHA-256 are the local file's.
//! * After an upload, a `HEAD` must show the local size and SHA-256.

use std::{
    io::{Read, Seek},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder, Checksum},
    multipart::MultipartStore,
    path::Path as Key,
};
use sha2::{Digest, Sha256};

use super::credentials::Credentials;
use crate::{config::StorageConfig, sessions::uploads::StoredObject};

/// The most parts S3 takes in one multipart upload.
const MAX_PARTS: u64 = 10_000;

/// The metadata entry with the whole object's hex SHA-256.
const SHA256_META: &str = "sha256";

/// An object the store holds, as confirmed by a `HEAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub object: StoredObject,
    /// It was there already (an earlier attempt's upload that was not recorded).
    pub existed: bool,
}

pub struct Bucket {
    store: AmazonS3,
    /// Used only to complete multipart uploads: it sends `If-None-Match: *`.
    create_only: AmazonS3,
    part_size: u64,
}

impl Bucket {
    pub fn new(config: &StorageConfig, credentials: &Credentials) -> Result<Bucket> {
        let part_size = config.part_size_mb << 20;
        let mut create = http::HeaderMap::new();
        create.insert(
            http::header::IF_NONE_MATCH,
            http::HeaderValue::from_static("*"),
        );
        Ok(Bucket {
            store: builder(config, credentials, ClientOptions::new())?,
            create_only: builder(
                config,
                credentials,
                ClientOptions::new().with_default_headers(create),
            )?,
            part_size,
        })
    }

    /// Uploads the local file `path` to `key`, create-only, and confirms it. The file is
    /// opened once (never through a symlink, and only a regular file); what is sent is
    /// hashed as it is sent and must be what was hashed first.
    pub async fn put_file(&self, path: &Path, key: &str) -> Result<Stored> {
        let owned = path.to_owned();
        let (file, size, sha256) = tokio::task::spawn_blocking(move || {
            let mut file = open_spool_file(&owned)?;
            let (size, sha256) = hash_reader(&mut file)
                .with_context(|| format!("cannot read {}", owned.display()))?;
            file.seek(std::io::SeekFrom::Start(0))?;
            anyhow::Ok((file, size, sha256))
        })
        .await??;
        let location = Key::from(key);
        let put = if size <= self.part_size {
            let bytes = tokio::task::spawn_blocking(move || {
                let mut bytes = Vec::with_capacity(size as usize);
                (&file)
                    .take(size + 1)
                    .read_to_end(&mut bytes)
                    .map(|_| bytes)
            })
            .await?
            .with_context(|| format!("cannot read {}", path.display()))?;
            anyhow::ensure!(
                hex::encode(Sha256::digest(&bytes)) == sha256,
                "{} changed while it was uploaded",
                path.display()
            );
            self.put_whole(&location, Bytes::from(bytes), &sha256).await
        } else {
            self.put_parts(&location, file, size, &sha256).await
        };
        self.settle(put, &location, size, &sha256).await
    }

    /// Uploads `bytes` to `key`, create-only, and confirms it.
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<Stored> {
        let size = bytes.len() as u64;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let location = Key::from(key);
        let put = self.put_whole(&location, bytes, &sha256).await;
        self.settle(put, &location, size, &sha256).await
    }

    async fn put_whole(
        &self,
        location: &Key,
        bytes: Bytes,
        sha256: &str,
    ) -> object_store::Result<Option<String>> {
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: attributes(sha256),
            ..Default::default()
        };
        let result = self
            .store
            .put_opts(location, PutPayload::from(bytes), opts)
            .await?;
        Ok(result.version)
    }

    async fn put_parts(
        &self,
        location: &Key,
        file: std::fs::File,
        size: u64,
        sha256: &str,
    ) -> object_store::Result<Option<String>> {
        // A key that is taken needs no parts: the completion would be refused anyway. A
        // store that will not say (AWS answers 403 for a missing key to a caller without
        // s3:ListBucket) is asked by the create-only completion instead.
        if let Ok(Some(_)) = self.head(location).await {
            return Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "the key is taken".into(),
            });
        }
        let opts = PutMultipartOptions {
            attributes: attributes(sha256),
            ..Default::default()
        };
        let id = self.store.create_multipart_opts(location, opts).await?;
        let result = self.send_parts(location, &id, file, size, sha256).await;
        if result.is_err() {
            // Best effort: the bucket's lifecycle rule aborts what is left.
            let _ = self.store.abort_multipart(location, &id).await;
        }
        result
    }

    async fn send_parts(
        &self,
        location: &Key,
        id: &String,
        file: std::fs::File,
        size: u64,
        sha256: &str,
    ) -> object_store::Result<Option<String>> {
        let mut reader = std::io::BufReader::new(file);
        let (mut parts, mut sent, mut hasher) = (Vec::new(), 0, Sha256::new());
        // S3 takes at most 10,000 parts: a file larger than that many parts gets larger ones.
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        while sent < size {
            let len = part_size.min(size - sent);
            let (back, chunk) = tokio::task::spawn_blocking(move || {
                let mut chunk = vec![0; len as usize];
                let read = reader.read_exact(&mut chunk);
                (reader, read.map(|()| chunk))
            })
            .await
            .map_err(|e| local_error(std::io::Error::other(e)))?;
            reader = back;
            let chunk = chunk.map_err(local_error)?;
            hasher.update(&chunk);
            let part = self
                .store
                .put_part(location, id, parts.len(), PutPayload::from(chunk))
                .await?;
            parts.push(part);
            sent += len;
        }
        if hex::encode(hasher.finalize()) != sha256 {
            return Err(local_error(std::io::Error::other(
                "the file changed while it was uploaded",
            )));
        }
        let result = self
            .create_only
            .complete_multipart(location, id, parts)
            .await
            .map_err(|e| match e {
                object_store::Error::Precondition { path, source }
                | object_store::Error::NotModified { path, source } => {
                    object_store::Error::AlreadyExists { path, source }
                }
                other => other,
            })?;
        Ok(result.version)
    }

    /// After a put: a taken key is compared; a new object is confirmed by a `HEAD`.
    async fn settle(
        &self,
        put: object_store::Result<Option<String>>,
        location: &Key,
        size: u64,
        sha256: &str,
    ) -> Result<Stored> {
        let (version, existed) = match put {
            Ok(version) => (version, false),
            Err(object_store::Error::AlreadyExists { .. }) => (None, true),
            Err(e) => bail!("cannot upload {location}: {}", describe(&e)),
        };
        let head = self.head(location).await.map_err(|e| {
            anyhow!(
                "cannot confirm {location} with HEAD (the key needs s3:GetObject on its prefix): {}",
                describe(&e)
            )
        })?;
        let Some(head) = head else {
            bail!("{location}: the store does not show the object just uploaded");
        };
        if head.size != size || head.object.sha256 != sha256 {
            bail!(
                "{location}: the store holds {} bytes with SHA-256 {:?}, not this file's {size} bytes with {sha256}{}",
                head.size,
                head.object.sha256,
                if existed {
                    " (the key was taken; the local copy is kept)"
                } else {
                    ""
                }
            );
        }
        if existed {
            // Metadata is only what a writer claimed: the bytes must be these.
            let (got_size, got) = self.download_hash(location).await?;
            if got_size != size || got != sha256 {
                bail!(
                    "{location}: the key was taken by {got_size} bytes with SHA-256 {got}, not this file's {size} bytes with {sha256} (the local copy is kept)"
                );
            }
        }
        Ok(Stored {
            size,
            object: StoredObject {
                key: location.to_string(),
                version_id: version.or(head.object.version_id),
                sha256: sha256.to_string(),
            },
            existed,
        })
    }

    /// The object at `location`, if any: its size, version and recorded SHA-256.
    async fn head(&self, location: &Key) -> object_store::Result<Option<Stored>> {
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let result = match self.store.get_opts(location, opts).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let sha256 = result
            .attributes
            .get(&Attribute::Metadata(SHA256_META.into()))
            .map(|v| v.to_string())
            .unwrap_or_default();
        Ok(Some(Stored {
            size: result.meta.size,
            object: StoredObject {
                key: location.to_string(),
                version_id: result.meta.version,
                sha256,
            },
            existed: true,
        }))
    }

    /// Size and hex SHA-256 of the object's current version, as downloaded.
    async fn download_hash(&self, location: &Key) -> Result<(u64, String)> {
        self.download(location, GetOptions::default(), |_| Ok(()))
            .await
            .map_err(|e| anyhow!("cannot download {location} to compare it: {e:#}"))
    }

    /// Streams an object through `sink`; its size and hex SHA-256.
    async fn download(
        &self,
        location: &Key,
        opts: GetOptions,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(u64, String)> {
        use futures::StreamExt;
        let result = self
            .store
            .get_opts(location, opts)
            .await
            .map_err(|e| anyhow!("{}", describe(&e)))?;
        let mut stream = result.into_stream();
        let (mut hasher, mut size) = (Sha256::new(), 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| anyhow!("{}", describe(&e)))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            sink(&chunk)?;
        }
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Downloads `object` (its version, when it has one) to `out` and checks its SHA-256.
    pub async fn get_to(&self, object: &StoredObject, out: &mut std::fs::File) -> Result<u64> {
        use std::io::Write;
        self.get_checked(object, |chunk| out.write_all(chunk)).await
    }

    /// Downloads `object` into memory and checks its SHA-256 (the console's recordings);
    /// `None` if it is larger than `max` bytes (the download stops there).
    pub async fn get_bytes(&self, object: &StoredObject, max: usize) -> Result<Option<Vec<u8>>> {
        let mut bytes = Vec::new();
        let mut over = false;
        let got = self
            .get_checked(object, |chunk| {
                if bytes.len() + chunk.len() > max {
                    over = true;
                    return Err(std::io::Error::other("larger than the cap"));
                }
                bytes.extend_from_slice(chunk);
                Ok(())
            })
            .await;
        match got {
            _ if over => Ok(None),
            Ok(_) => Ok(Some(bytes)),
            Err(e) => Err(e),
        }
    }

    async fn get_checked(
        &self,
        object: &StoredObject,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64> {
        let opts = GetOptions {
            version: object.version_id.clone(),
            ..Default::default()
        };
        let location = Key::from(object.key.as_str());
        let (size, got) = self.download(&location, opts, sink).await.map_err(|e| {
            anyhow!(
                "cannot download {}: {e:#} (a download by version needs a key with s3:GetObject and s3:GetObjectVersion: --credentials)",
                object.key,
            )
        })?;
        if got != object.sha256 {
            bail!(
                "{}: downloaded SHA-256 {got} is not the {} the session log recorded",
                object.key,
                object.sha256
            );
        }
        Ok(size)
    }
}

fn builder(
    config: &StorageConfig,
    credentials: &Credentials,
    options: ClientOptions,
) -> Result<AmazonS3> {
    let options = options
        .with_allow_http(config.endpoint.starts_with("http://"))
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(300));
    // Few quick retries here: the uploader retries the whole file with its own backoff.
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
    };
    let mut builder = AmazonS3Builder::new()
        .with_endpoint(&config.endpoint)
        .with_region(&config.region)
        .with_bucket_name(&config.bucket)
        .with_access_key_id(&credentials.access_key_id)
        .with_secret_access_key(credentials.secret_access_key.as_str())
        .with_virtual_hosted_style_request(false)
        .with_checksum_algorithm(Checksum::SHA256)
        .with_retry(retry)
        .with_client_options(options);
    if let Some(token) = &credentials.session_token {
        builder = builder.with_token(token.as_str());
    }
    builder
        .build()
        .map_err(|e| anyhow!("[storage]: cannot set up the S3 client: {e}"))
}

fn attributes(sha256: &str) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(SHA256_META.into()),
        sha256.to_string().into(),
    );
    attributes
}

/// An S3 error in one line: the HTTP status and the S3 error code and message when the
/// store answered with one (`403 Forbidden: SignatureDoesNotMatch: …`), else the client's
/// own text.
pub fn describe(e: &object_store::Error) -> String {
    let text = e.to_string();
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let len = text[start..].find(close)?;
        Some(text[start..start + len].to_string())
    };
    let status = between("status code: ", ":");
    match (status, between("<Code>", "</Code>")) {
        (Some(status), Some(code)) => match between("<Message>", "</Message>") {
            Some(message) => format!("{status}: {code}: {message}"),
            None => format!("{status}: {code}"),
        },
        _ => text.chars().take(600).collect(),
    }
}

fn local_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local spool",
        source: Box::new(e),
    }
}

/// Opens a spool file for upload: never through a symlink, and only a regular file.
fn open_spool_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    anyhow::ensure!(
        file.metadata()?.is_file(),
        "{} is not a regular file",
        path.display()
    );
    Ok(file)
}

/// Size and hex SHA-256 of what `reader` holds.
fn hash_reader(reader: &mut impl Read) -> std::io::Result<(u64, String)> {
    let (mut hasher, mut size) = (Sha256::new(), 0u64);
    let mut block = vec![0; 1 << 20];
    loop {
        let n = match reader.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&block[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_is_one_line_with_its_code() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://h/b/k in 1ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match.</Message></Error>".into(),
        };
        assert_eq!(
            describe(&e),
            "403 Forbidden: SignatureDoesNotMatch: The request signature we calculated does not match."
        );
    }
}
