-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d/):
-- one database per server, both owned by the POSTGRES_USER the image created.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
