//! `farm.v1.Catalog`: the dependency catalog the line protocol also
//! serves, over gRPC. Requests become [`Change`]s and [`Name`]s through
//! `TryFrom`; the catalog's refusals become status codes in `api::error`.

use farm_api::v1::{
    GetRequest, GetResponse, IndexRequest, IndexResponse, ListRequest, ListResponse, QueryRequest,
    QueryResponse, RemoveRequest, RemoveResponse, catalog_server,
};
use tonic::{Request, Response, Status};

use super::{ApiError, BadRequest};
use crate::{
    core::catalog::{Change, Effect, Name, parse_dependencies},
    state::Catalog,
};

/// Names per `List` page when the request asks for none.
const DEFAULT_PAGE: usize = 100;
/// Most names per `List` page.
const MAX_PAGE: u32 = 1000;

/// The Catalog service.
#[derive(Debug, Clone)]
pub struct CatalogService {
    catalog: Catalog,
}

impl CatalogService {
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
}

/// The name a request gives in `name`.
fn name(given: &str) -> Result<Name, ApiError> {
    if given.is_empty() {
        return Err(BadRequest::missing("name").into());
    }
    Ok(Name::parse(given)?)
}

impl TryFrom<IndexRequest> for Change {
    type Error = ApiError;

    fn try_from(request: IndexRequest) -> Result<Self, ApiError> {
        Ok(Change::Index {
            name: name(&request.name)?,
            dependencies: parse_dependencies(request.dependencies.iter().map(String::as_str))?,
        })
    }
}

/// A `List` request, read.
struct Listing {
    prefix: String,
    after: Option<Name>,
    limit: usize,
}

impl TryFrom<ListRequest> for Listing {
    type Error = ApiError;

    fn try_from(request: ListRequest) -> Result<Self, ApiError> {
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            size if size <= MAX_PAGE => size as usize,
            size => {
                return Err(BadRequest::out_of_range(
                    "page_size",
                    size,
                    format!("at most {MAX_PAGE} (0: {DEFAULT_PAGE})"),
                )
                .into());
            }
        };
        let after =
            match request.page_token.as_str() {
                "" => None,
                token => Some(Name::parse(token).map_err(|_| {
                    BadRequest::Rule("page_token is not one a previous List returned")
                })?),
            };
        Ok(Self {
            prefix: request.prefix,
            after,
            limit,
        })
    }
}

#[tonic::async_trait]
impl catalog_server::Catalog for CatalogService {
    async fn index(
        &self,
        request: Request<IndexRequest>,
    ) -> Result<Response<IndexResponse>, Status> {
        let change = Change::try_from(request.into_inner())?;
        let effect = self.catalog.submit(change).await?;
        Ok(Response::new(IndexResponse {
            replaced: matches!(effect, Effect::Replaced | Effect::Kept),
        }))
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<RemoveResponse>, Status> {
        let name = name(&request.into_inner().name)?;
        let effect = self.catalog.submit(Change::Remove { name }).await?;
        Ok(Response::new(RemoveResponse {
            removed: effect == Effect::Removed,
        }))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let name = name(&request.into_inner().name)?;
        Ok(Response::new(QueryResponse {
            indexed: self.catalog.is_indexed(name.as_str()),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let name = name(&request.into_inner().name)?;
        let described = self.catalog.get(&name)?;
        let strings = |names: Vec<Name>| names.iter().map(Name::to_string).collect();
        Ok(Response::new(GetResponse {
            name: name.to_string(),
            dependencies: strings(described.dependencies),
            dependents: strings(described.dependents),
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let listing = Listing::try_from(request.into_inner())?;
        let page = self.catalog.list(
            &listing.prefix,
            listing.after.as_ref().map(Name::as_str),
            listing.limit,
        );
        Ok(Response::new(ListResponse {
            names: page.names.iter().map(Name::to_string).collect(),
            next_page_token: page.next_after.map(|n| n.to_string()).unwrap_or_default(),
            total: self.catalog.len() as u64,
        }))
    }
}
