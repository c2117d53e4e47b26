# syntax=docker/dockerfile:1
# One Patroni node for docker-compose.yml's "ha" profile: PostgreSQL 15 with
# Debian's patroni (the versions tests/ha/ runs), configured from
# deploy/ha/patroni.yml.template by deploy/ha/patroni-start.sh.
FROM postgres:15-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends patroni python3-etcd \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/ha/patroni.yml.template deploy/ha/patroni-start.sh /etc/patroni/
USER postgres
ENTRYPOINT ["sh", "/etc/patroni/patroni-start.sh"]
