// A thresholds layer's comparator stage, the reference for the engine's `thresholds` op
// (docs/arithmetic.md section 12): a float chain as hardware computes it.
//
//   v   = negate ? -x : x                       (the channel's direction)
//   out = first + step * #{l < cfg_levels : v >= T[l]}  (a level is reached at or above its
//                                                         threshold; step 2: bipolar -1, +1)
//
// One comparator per level and a population count, all in one cycle (FINN's MultiThreshold
// unrolled). The channel's thresholds come packed, T[0] in the low T_BITS bits; levels at and
// above cfg_levels are ignored. Two's complement throughout; v has one bit more than x, so
// that -x of the most negative x is exact.
`timescale 1ns / 1ps

module wageubn_thresholds #(
    parameter X_BITS   = 64,
    parameter T_BITS   = 64,
    parameter LEVELS   = 255,
    parameter OUT_BITS = 16
) (
    input  wire signed [X_BITS-1:0]       x,
    input  wire                           negate,
    input  wire [LEVELS*T_BITS-1:0]       thresholds,
    input  wire [15:0]                    cfg_levels,
    input  wire signed [OUT_BITS-1:0]     first,
    input  wire signed [OUT_BITS-1:0]     step,
    output wire signed [OUT_BITS-1:0]     out
);
    // both sides sign-extended to one width, a bit wider than either
    localparam W = (X_BITS > T_BITS ? X_BITS : T_BITS) + 1;
    wire signed [W-1:0] wide = {{(W - X_BITS){x[X_BITS-1]}}, x};
    wire signed [W-1:0] v = negate ? -wide : wide;

    wire [LEVELS-1:0] reached;
    genvar i;
    generate
        for (i = 0; i < LEVELS; i = i + 1) begin : comparator
            wire [T_BITS-1:0] t = thresholds[i * T_BITS +: T_BITS];
            wire signed [W-1:0] t_wide = {{(W - T_BITS){t[T_BITS-1]}}, t};
            assign reached[i] = (i < cfg_levels) && (v >= t_wide);
        end
    endgenerate

    integer k;
    reg [OUT_BITS-1:0] count;  // LEVELS < 2**(OUT_BITS-1): no overflow (first + step * count fits
                               // the layer's levels, which fit OUT_BITS)
    always @(*) begin
        count = {OUT_BITS{1'b0}};
        for (k = 0; k < LEVELS; k = k + 1)
            count = count + {{(OUT_BITS-1){1'b0}}, reached[k]};
    end
    assign out = first + step * $signed(count);
endmodule
