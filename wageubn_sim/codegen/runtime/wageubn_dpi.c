/* wageubn_dpi.c: the golden model behind SystemVerilog's DPI-C (wageubn_golden_pkg.sv imports
 * these). One image per call; every layer's output of the last call stays readable by tap. */
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

static int64_t *wg_out[WG_LAYERS], *wg_acc[WG_LAYERS];
static wg_events wg_ev[WG_LAYERS][3];

/* Load and check the parameters (0: ready; -1: the reason is printed). */
int wg_dpi_init(const char *params_path) {
    char err[512];
    if (wg_init(params_path, err, (int)sizeof err) != 0) {
        fprintf(stderr, "wg_dpi_init: %s\n", err);
        return -1;
    }
    for (int k = 0; k < WG_LAYERS; k++) {
        free(wg_out[k]);
        free(wg_acc[k]);
        wg_out[k] = calloc((size_t)WG_LAYER_INFO[k].size + 1u, 8u);
        wg_acc[k] = WG_LAYER_INFO[k].accumulator_size ? calloc((size_t)WG_LAYER_INFO[k].accumulator_size + 1u, 8u) : 0;
        if (!wg_out[k] || (WG_LAYER_INFO[k].accumulator_size && !wg_acc[k])) {
            fprintf(stderr, "wg_dpi_init: out of memory\n");
            return -1;
        }
    }
    return 0;
}

/* One image: x holds WG_INPUT_SIZE integers of the input format, y receives the output layer's. */
void wg_dpi_run(const long long *x, long long *y) {
    int64_t in[WG_INPUT_SIZE];
    for (int64_t i = 0; i < WG_INPUT_SIZE; i++) in[i] = (int64_t)x[i];
    if (wg_run_image(in, wg_out, wg_acc, wg_ev) != 0) fprintf(stderr, "wg_dpi_run: %s\n", wg_error);
    for (int64_t i = 0; i < WG_LAYER_INFO[WG_OUTPUT_LAYER].size; i++) y[i] = (long long)wg_out[WG_OUTPUT_LAYER][i];
}

/* Layer `layer`'s output value `index` of the last call (a scoreboard's view of one layer). */
long long wg_dpi_tap(int layer, long long index) {
    if (layer < 0 || layer >= WG_LAYERS || index < 0 || index >= WG_LAYER_INFO[layer].size) return 0;
    return (long long)wg_out[layer][index];
}
