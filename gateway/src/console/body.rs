//! The console's response body: bytes, and what must stay held until they are sent (the
//! memory budget of a recording), released when the body is dropped.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

pub struct Body {
    bytes: Full<Bytes>,
    _held: Option<OwnedSemaphorePermit>,
}

impl Body {
    pub fn new(bytes: impl Into<Bytes>) -> Body {
        Body {
            bytes: Full::new(bytes.into()),
            _held: None,
        }
    }

    /// Bytes that count against a budget until the body is gone.
    pub fn held(bytes: impl Into<Bytes>, permit: OwnedSemaphorePermit) -> Body {
        Body {
            bytes: Full::new(bytes.into()),
            _held: Some(permit),
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().bytes).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.bytes.size_hint()
    }
}
