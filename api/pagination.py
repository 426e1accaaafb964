from __future__ import annotations

from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    """?page=N (from 1) and ?page_size=N (at most 200; 50 by default), as the pages' lists."""

    page_size_query_param = "page_size"
    max_page_size = 200
