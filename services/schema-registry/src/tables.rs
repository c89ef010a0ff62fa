//! The registry's tables: schemas by global id, the versions of each subject, and the
//! compatibility level of each subject (the global one under the empty subject).

use sea_orm::DbErr;
use sea_orm::sea_query::{ColumnDef, Index, Table};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

pub mod schema {
    use sea_orm::entity::prelude::*;

    /// One distinct schema (by Parsing Canonical Form) and its global id.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schema_registry_schemas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        /// CRC-64-AVRO of the Parsing Canonical Form, hex: the single-object fingerprint.
        #[sea_orm(unique)]
        pub fingerprint: String,
        /// The schema as first registered (with its docs and defaults).
        #[sea_orm(column_type = "Text")]
        pub schema: String,
        pub registered_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod version {
    use sea_orm::entity::prelude::*;

    /// One version of a subject. Deleting a subject marks its versions deleted (soft delete):
    /// the schemas stay readable by id and fingerprint.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schema_registry_versions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: i32,
        pub schema_id: i32,
        pub deleted: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod config {
    use sea_orm::entity::prelude::*;

    /// A compatibility level; the empty subject holds the global one.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schema_registry_config")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject: String,
        pub compatibility: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Creates the registry's three tables.
pub struct SchemaRegistryMigration;

impl MigrationName for SchemaRegistryMigration {
    fn name(&self) -> &str {
        "m0005_schema_registry"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SchemaRegistryMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use config::Column as C;
        use schema::Column as S;
        use version::Column as V;
        manager
            .create_table(
                Table::create()
                    .table(schema::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(S::Id).integer().not_null().primary_key())
                    .col(
                        ColumnDef::new(S::Fingerprint)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(S::Schema).text().not_null())
                    .col(ColumnDef::new(S::RegisteredAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(version::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(V::Subject).string().not_null())
                    .col(ColumnDef::new(V::Version).integer().not_null())
                    .col(ColumnDef::new(V::SchemaId).integer().not_null())
                    .col(ColumnDef::new(V::Deleted).boolean().not_null())
                    .primary_key(Index::create().col(V::Subject).col(V::Version))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(config::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(C::Subject).string().not_null().primary_key())
                    .col(ColumnDef::new(C::Compatibility).string().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Table::drop().table(config::Entity).to_owned(),
            Table::drop().table(version::Entity).to_owned(),
            Table::drop().table(schema::Entity).to_owned(),
        ] {
            manager.drop_table(table).await?;
        }
        Ok(())
    }
}
