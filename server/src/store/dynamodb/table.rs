//! The DynamoDB table itself: creating it with its indexes and TTL (for
//! development and tests; production tables come from the deploy template)
//! and checking that it is there. Never reads or writes items.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};

use super::{
    BY_TENANT_INDEX, DynamoStore, LIVE_INDEX, TTL_ATTRIBUTE,
    error::{aws, built},
};
use crate::store::Result;

impl DynamoStore {
    /// Creates the table with its indexes and TTL attribute (for development
    /// and tests; production tables come from the deploy template).
    pub async fn create_table(&self) -> Result<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(built)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(built)
        };
        let all = Projection::builder()
            .projection_type(ProjectionType::All)
            .build();
        let by_tenant = GlobalSecondaryIndex::builder()
            .index_name(BY_TENANT_INDEX)
            .key_schema(key("list_pk", KeyType::Hash)?)
            .key_schema(key("list_sk", KeyType::Range)?)
            .projection(all.clone())
            .build()
            .map_err(built)?;
        let live = GlobalSecondaryIndex::builder()
            .index_name(LIVE_INDEX)
            .key_schema(key("live_shard", KeyType::Hash)?)
            .key_schema(key("pk", KeyType::Range)?)
            .projection(all)
            .build()
            .map_err(built)?;
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(attr("list_pk")?)
            .attribute_definitions(attr("list_sk")?)
            .attribute_definitions(attr("live_shard")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(by_tenant)
            .global_secondary_indexes(live)
            .send()
            .await
            .map_err(aws)?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()
                    .map_err(built)?,
            )
            .send()
            .await
            .map_err(aws)?;
        Ok(())
    }

    /// Checks that the table exists and is reachable.
    pub async fn check(&self) -> Result<()> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(aws)?;
        Ok(())
    }
}
