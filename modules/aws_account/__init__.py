"""aws_account: the credentials of this database's AWS account and its regions."""

from __future__ import annotations

from modules import VERSION
from modules.spec import (
    AccountCapability,
    Cloud,
    CloudError,
    Column,
    ModuleSpec,
    Record,
    Table,
)

# Functions the tables use. `default_aws_region()` is the default of every region column
# (modules._aws.region).
_SETUP = (
    """CREATE OR REPLACE FUNCTION aws_default_endpoint() RETURNS varchar
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
        SELECT s.value FROM public.iasql_settings s
        WHERE s.key OPERATOR(pg_catalog.=) 'default_endpoint_url'
    $$""",
)

_REGION_FUNCTIONS = (
    """CREATE OR REPLACE FUNCTION default_aws_region() RETURNS varchar
    LANGUAGE sql STABLE AS $$ SELECT region FROM aws_regions WHERE is_default $$""",
    """CREATE OR REPLACE FUNCTION default_aws_region(new_region text) RETURNS varchar
    LANGUAGE plpgsql AS $$
    BEGIN
        IF new_region IS NULL THEN
            RAISE EXCEPTION 'default_aws_region(): the argument new_region cannot be NULL'
                USING ERRCODE = '22004', HINT = 'SELECT default_aws_region() reads it';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM aws_regions WHERE region = new_region) THEN
            RAISE EXCEPTION 'unknown region %', new_region USING ERRCODE = '22023',
                HINT = 'SELECT region FROM aws_regions lists them';
        END IF;
        -- aws_regions_move_default clears the previous default's flag.
        UPDATE aws_regions SET is_default = true WHERE region = new_region AND NOT is_default;
        RETURN new_region;
    END $$""",
    # As in IaSQL, `UPDATE aws_regions SET is_default = true WHERE region = 'us-west-2'`
    # moves the default there: the statement that sets one region's flag clears the others'.
    """CREATE OR REPLACE FUNCTION aws_regions_move_default() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        picked text[];
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM aws_regions) THEN  -- the UPDATE met no row at all
            RAISE NOTICE 'aws_regions is empty: the account''s regions are not read yet'
                USING HINT = 'add credentials, then SELECT * FROM iasql_sync() reads them';
            RETURN NULL;
        END IF;
        SELECT array_agg(n.region ORDER BY n.region) INTO picked FROM aws_regions_new n
        WHERE n.is_default AND NOT EXISTS (
            SELECT 1 FROM aws_regions_old o WHERE o.region = n.region AND o.is_default);
        IF cardinality(picked) > 1 THEN
            RAISE EXCEPTION 'only one region can be the default; this statement picks %',
                array_to_string(picked, ', ') USING ERRCODE = '23514',
                HINT = format('pick one: UPDATE aws_regions SET is_default = true'
                    ' WHERE region = %L', picked[1]);
        ELSIF cardinality(picked) = 1 THEN
            UPDATE aws_regions SET is_default = false WHERE is_default AND region <> picked[1];
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER aws_regions_move_default AFTER UPDATE ON aws_regions
        REFERENCING OLD TABLE AS aws_regions_old NEW TABLE AS aws_regions_new
        FOR EACH STATEMENT EXECUTE FUNCTION aws_regions_move_default()""",
    # Exactly one default region, checked at the end of each Postgres transaction. None at
    # all (the regions were just read from a new account) picks us-east-1, else the first;
    # but a user who cleared the only default's flag is told how to move it instead.
    """CREATE OR REPLACE FUNCTION aws_regions_check_default() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM aws_regions WHERE is_default) THEN
            IF TG_OP = 'UPDATE' AND OLD.is_default AND NOT NEW.is_default
                    AND EXISTS (SELECT 1 FROM aws_regions WHERE region = NEW.region) THEN
                RAISE EXCEPTION 'aws_regions needs a default region: % was the only one',
                    OLD.region USING ERRCODE = '23514',
                    HINT = 'move the default instead: UPDATE aws_regions SET is_default = true'
                        ' WHERE region = ''us-west-2''';
            END IF;
            UPDATE aws_regions SET is_default = true WHERE region = (
                SELECT region FROM aws_regions ORDER BY region <> 'us-east-1', region LIMIT 1);
        ELSIF (SELECT count(*) FROM aws_regions WHERE is_default) > 1 THEN
            RAISE EXCEPTION 'only one region can be the default' USING ERRCODE = '23514',
                HINT = 'move it: UPDATE aws_regions SET is_default = true'
                    ' WHERE region = ''us-west-2''';
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER aws_regions_one_default
        AFTER INSERT OR UPDATE OR DELETE ON aws_regions
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION aws_regions_check_default()""",
)


class RegionsMapper:
    """The account's regions. Which one is the default and which are enabled is this
    database's own setting, so only the set of regions comes from the cloud."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", None) as ec2:
            answer = await ec2.describe_regions()
        return [{"region": r["RegionName"]} for r in answer["Regions"]]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(f"{record['region']} is not a region of this account")

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current

    async def delete(self, cloud: Cloud, current: Record) -> None:
        raise CloudError("the regions of an account cannot be deleted; set is_enabled = false")


CREDENTIALS = Table(
    name="aws_credentials",
    columns=(
        Column("access_key_id", "varchar", nullable=False),
        Column("secret_access_key", "varchar", nullable=False, secret=True),
        Column("session_token", "varchar", secret=True),
        # Ours: NULL means real AWS; otherwise every AWS call of this database goes there.
        Column("endpoint_url", "varchar", default="aws_default_endpoint()"),
    ),
    mapper=None,
    natural_key=("access_key_id",),
    regional=False,
)

REGIONS = Table(
    name="aws_regions",
    columns=(
        Column("region", "varchar", nullable=False),
        Column("is_default", "boolean", nullable=False, default="false", local=True),
        Column("is_enabled", "boolean", nullable=False, default="true", local=True),
    ),
    mapper=RegionsMapper(),
    natural_key=("region",),
    cloud_id=("region",),
    primary_key=("region",),
    regional=False,
    extra_ddl=_REGION_FUNCTIONS,
)

MODULE = ModuleSpec(
    name="aws_account",
    version=VERSION,
    description="AWS credentials and regions of this database's account",
    tables=(CREDENTIALS, REGIONS),
    setup_sql=_SETUP,
    teardown_sql=(
        "DROP FUNCTION IF EXISTS default_aws_region()",
        "DROP FUNCTION IF EXISTS default_aws_region(text)",
        "DROP FUNCTION IF EXISTS aws_regions_check_default()",
        "DROP FUNCTION IF EXISTS aws_regions_move_default()",
        "DROP FUNCTION IF EXISTS aws_default_endpoint()",
    ),
    account=AccountCapability(
        credentials=CREDENTIALS,
        regions=REGIONS,
        default_region_sql="SELECT default_aws_region()",
    ),
)
