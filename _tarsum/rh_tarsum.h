/* Incremental tarsum: declared by the tarsum work (placeholder header, no entry points yet). */
